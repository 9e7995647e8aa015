"""Completion configuration: the one place defaults live; saved into every artifact."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {msg}")


@dataclass(frozen=True)
class InferenceConfig:
    """Query-time parameters of the completion path.

    Attributes
    ----------
    beam_size : int
        Beam width per tree level of the XR-Linear beam search.
    n_model_candidates : int
        Labels taken from the beam search before merging (>= the requested k).
    post_processor : str
        ``"l3-hinge"`` or ``"sigmoid"``.
    prefix_constrained : bool
        Restrict the beam to tree nodes holding a label that starts with the prefix.
    suffix_completions : bool
        Fill with synthetic completions (typed words + popular query suffix) before MPC back-off
        (the cascade path).
    ranked : bool
        Rank the union of every completion arm with the artifact's learned ranker (issue 4). False,
        or an artifact without a ranker, answers with the cascade: XR-Linear, then MPC, suffix
        completions, MPC back-off.
    per_arm : int
        Candidates each arm contributes to the ranked union (8: dev MRR@10 0.4182 vs 0.4185 with 10,
        with fewer candidates to featurise and score; README, "Measured results").
    typo_min_exact : int
        The typo and back-off arms run only when the exact prefix has fewer MPC completions.
    """

    beam_size: int = 10
    n_model_candidates: int = 20
    post_processor: str = "l3-hinge"
    prefix_constrained: bool = True
    suffix_completions: bool = True
    ranked: bool = True
    per_arm: int = 8
    typo_min_exact: int = 10

    def __post_init__(self) -> None:
        _check(1 <= self.beam_size <= 1000, "beam_size", f"must be in 1..1000, got {self.beam_size}")
        _check(1 <= self.n_model_candidates <= 1000, "n_model_candidates", "must be in 1..1000")
        _check(self.post_processor in ("l3-hinge", "sigmoid"), "post_processor", f"unknown {self.post_processor!r}")
        _check(1 <= self.per_arm <= 100, "per_arm", "must be in 1..100")
        _check(1 <= self.typo_min_exact <= 100, "typo_min_exact", "must be in 1..100")


@dataclass(frozen=True)
class BuildConfig:
    """Offline build parameters of the completion index.

    Attributes
    ----------
    session_gap_seconds : int
        Inactivity gap that ends a session (qp2q: 1800 s).
    seed : int
        Seed for prefix sampling, clustering and the coordinate-descent order.
    n_prefixes_per_pair : int
        Training points drawn per (previous, next) pair, each with its own uniform prefix
        (qp2q: 1; seeds ``seed, seed + 1, ...``).
    tree_kind, trie_depth, max_leaf_size : str, int, int
        Label tree (``"hybrid"``: trie to ``trie_depth`` then balanced 2-means, leaves of at most
        ``max_leaf_size`` labels).
    C, max_iter, eps, threshold, bias : float, int, float, float, float
        XR-Linear per-node L2-regularised squared-hinge classifiers (PECOS defaults).
    n_threads : int
        Build threads.
    ranker_tail_days : int
        Completion ranker: the arms are built on the log before its last ``ranker_tail_days`` days
        and the ranker is fitted on completion points of those days (0 = no ranker).
    ranker_objective, ranker_trees, ranker_leaves : str, int, int
        ``retrieval.ranker.RankerConfig`` of the completion ranker.
    ranker_prefixes_per_pair : int
        Ranker training points per (previous, next) pair of the tail, each with its own prefix.
    """

    session_gap_seconds: int = 1800
    seed: int = 0
    n_prefixes_per_pair: int = 1
    tree_kind: str = "hybrid"
    trie_depth: int = 3
    max_leaf_size: int = 100
    C: float = 1.0
    max_iter: int = 20
    eps: float = 0.1
    threshold: float = 0.1
    bias: float = 1.0
    n_threads: int = 2
    ranker_tail_days: int = 7
    ranker_objective: str = "lambdarank"
    ranker_trees: int = 100
    ranker_leaves: int = 15
    ranker_prefixes_per_pair: int = 2
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        _check(self.session_gap_seconds > 0, "session_gap_seconds", "must be > 0")
        _check(1 <= self.n_prefixes_per_pair <= 64, "n_prefixes_per_pair", "must be in 1..64")
        _check(self.tree_kind in ("hybrid", "trie", "kmeans"), "tree_kind", f"unknown {self.tree_kind!r}")
        _check(self.trie_depth >= 0, "trie_depth", "must be >= 0")
        _check(self.max_leaf_size >= 2, "max_leaf_size", "must be >= 2")
        _check(self.C > 0, "C", "must be > 0")
        _check(self.max_iter >= 1, "max_iter", "must be >= 1")
        _check(self.n_threads >= 1, "n_threads", "must be >= 1")
        _check(0 <= self.ranker_tail_days <= 365, "ranker_tail_days", "must be in 0..365")
        _check(self.ranker_objective in ("regression", "lambdarank"), "ranker_objective",
               f"unknown {self.ranker_objective!r}")
        _check(1 <= self.ranker_trees <= 2000, "ranker_trees", "must be in 1..2000")
        _check(2 <= self.ranker_leaves <= 255, "ranker_leaves", "must be in 2..255")
        _check(1 <= self.ranker_prefixes_per_pair <= 16, "ranker_prefixes_per_pair", "must be in 1..16")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BuildConfig":
        d = dict(d)
        inf = InferenceConfig(**d.pop("inference", {}))
        return cls(inference=inf, **d)
