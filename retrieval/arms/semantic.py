"""Semantic matcher arm: XR-Linear from queries to items (PECOS product search).

Extreme multi-label ranking from a query to the items it leads to, as in PECOS's semantic product
search (Chang et al., "Extreme Multi-label Learning for Semantic Matching in Product Search", KDD
2021; Yu et al., PECOS, JMLR 2022), with the completion half's XR-Linear machinery
(:mod:`qac.xmr`):

- **features**: ``l2norm([word 1-2-gram TF-IDF(q) | char 3-gram TF-IDF(q)])``, both blocks fitted on
  the distinct training queries (each block L2-normalised, then the concatenation; word bigrams are
  the tokens ``a+b`` of consecutive words, which a normalised query cannot contain; char 3-grams
  are not position-weighted). Built on :class:`qac.features.SessionFeaturizer`, whose word block
  reads the bigram-extended text and whose char block reads the query.
- **labels**: the catalogue's items; label id = item id (the tree gets the placeholder labels
  ``"%09d" % i``, sorted in id order, so no permutation is needed).
- **training pairs**: distinct ``(query, item)`` pairs (clicks, or judgments with a high grade).
- **label tree**: hierarchical balanced spherical 2-means (``kind="kmeans"``) on PIFA label
  embeddings: the normalised sum of the feature rows of the item's training queries; an item
  without training queries is embedded by the features of its own text, so it sits next to
  similar items (it has no positives, so it is rarely ranked high).
- **model**: :meth:`qac.xmr.model.XLinearModel.train` (one squared-hinge classifier per node,
  teacher-forcing negatives); retrieval is its numba beam search, ``topk = n``.

Scores are the beam search's path scores (l3-hinge by default), float32 descending, ties by item id
ascending. The arm is offline only (no ``observe``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from qac.features import CharTfidf, SessionFeaturizer, WordTfidf
from qac.text import normalize_query
from qac.xmr.model import POST_PROCESSORS, TrainConfig, XLinearModel
from qac.xmr.tree import TreeConfig, build_label_tree
from retrieval.arms.base import Arm, Context, check_n, check_query, empty_result

__all__ = ["SemanticConfig", "SemanticArm", "build_semantic_arm", "word_bigram_text"]

FORMAT = "semantic_arm/1"
_BIGRAM_JOIN = "+"


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)


@dataclasses.dataclass(frozen=True)
class SemanticConfig:
    """Parameters of the semantic (XR-Linear) arm.

    Parameters
    ----------
    beam_size : int >= 1
        Beam width of the tree search at serving time.
    post_processor : {"l3-hinge", "sigmoid"}
    max_leaf_size : int >= 2
        Leaf cluster size of the 2-means label tree.
    tree_seed : int >= 0
    C, max_iter, eps, threshold, bias, n_threads, seed
        :class:`qac.xmr.model.TrainConfig` fields (validated there).
    min_df : int >= 1
        Minimum document frequency of word and char terms.
    """

    beam_size: int = 10
    post_processor: str = "l3-hinge"
    max_leaf_size: int = 100
    tree_seed: int = 0
    C: float = 1.0
    max_iter: int = 20
    eps: float = 0.1
    threshold: float = 0.1
    bias: float = 1.0
    n_threads: int = 2
    seed: int = 0
    min_df: int = 1

    def __post_init__(self) -> None:
        if not _is_int(self.beam_size) or self.beam_size < 1:
            raise ValueError(f"SemanticConfig.beam_size must be an int >= 1, got {self.beam_size!r}")
        if self.post_processor not in POST_PROCESSORS:
            raise ValueError(f"SemanticConfig.post_processor must be one of {sorted(POST_PROCESSORS)}, "
                             f"got {self.post_processor!r}")
        if not _is_int(self.max_leaf_size) or self.max_leaf_size < 2:
            raise ValueError(f"SemanticConfig.max_leaf_size must be an int >= 2, got {self.max_leaf_size!r}")
        if not _is_int(self.tree_seed) or self.tree_seed < 0:
            raise ValueError(f"SemanticConfig.tree_seed must be an int >= 0, got {self.tree_seed!r}")
        if not _is_int(self.min_df) or self.min_df < 1:
            raise ValueError(f"SemanticConfig.min_df must be an int >= 1, got {self.min_df!r}")
        try:
            self.train_config()
        except ValueError as e:
            raise ValueError(str(e).replace("TrainConfig.", "SemanticConfig.")) from None

    def train_config(self) -> TrainConfig:
        return TrainConfig(C=self.C, max_iter=self.max_iter, eps=self.eps, threshold=self.threshold,
                           bias=self.bias, n_threads=self.n_threads, seed=self.seed)


def word_bigram_text(query: str) -> str:
    """The query's words followed by its word bigrams ``a+b`` (input of the word 1-2-gram block)."""
    toks = query.split()
    if len(toks) < 2:
        return query
    return " ".join([*toks, *map(_BIGRAM_JOIN.join, zip(toks, toks[1:]))])


def _label_texts(n_items: int) -> list[str]:
    return [f"{i:09d}" for i in range(n_items)]


class SemanticArm(Arm):
    """XR-Linear query -> item matcher (module docstring). Build with :func:`build_semantic_arm`.

    Attributes
    ----------
    name : str
        ``"semantic"``.
    featurizer : qac.features.SessionFeaturizer
    model : qac.xmr.model.XLinearModel
    config : SemanticConfig
    """

    name = "semantic"

    def __init__(self, config: SemanticConfig, featurizer: SessionFeaturizer, model: XLinearModel) -> None:
        if featurizer.n_features != model.n_features:
            raise ValueError(f"model.n_features {model.n_features} != featurizer.n_features "
                             f"{featurizer.n_features}")
        self.config = config
        self.featurizer = featurizer
        self.model = model

    @property
    def n_items(self) -> int:
        return self.model.n_labels

    def featurize(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """Feature row of a normalised query: (indices int32 sorted, data float32)."""
        return self.featurizer.transform_one(word_bigram_text(query), query)

    def retrieve(self, query: str, context: Context, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` items of the beam search for ``query``; ``context`` is unused.

        Returns
        -------
        ids : int32 (<= n,), scores : float32 (<= n,), descending, ties by id ascending.

        Raises
        ------
        ValueError
            ``n`` not an int >= 0, or ``query`` not a str.
        """
        n = check_n(n)
        query = normalize_query(check_query(query))
        if n == 0 or not query:
            return empty_result()
        xi, xd = self.featurize(query)
        if xi.size == 0:
            return empty_result()
        return self.model.predict_one(xi, xd, beam_size=self.config.beam_size, topk=n,
                                      post_processor=self.config.post_processor)

    def warmup(self) -> None:
        """Run the beam-search kernels once on the served arrays."""
        self.model.warmup()

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(params, arrays)``: featurizer arrays prefixed ``feat_`` and model arrays ``model_``."""
        fp, fa = self.featurizer.to_arrays()
        mp, ma = self.model.to_arrays()
        arrays = {f"feat_{k}": v for k, v in fa.items()}
        arrays.update({f"model_{k}": v for k, v in ma.items()})
        return {"format": FORMAT, "config": dataclasses.asdict(self.config), "featurizer": fp, "model": mp}, arrays

    @classmethod
    def from_arrays(cls, params: dict, arrays: Mapping[str, np.ndarray]) -> "SemanticArm":
        """Inverse of :meth:`to_arrays`; arrays may be read-only memory maps.

        Raises
        ------
        ValueError
            Unknown format, missing or inconsistent arrays.
        """
        if params.get("format") != FORMAT:
            raise ValueError(f"params.format must be {FORMAT!r}, got {params.get('format')!r}")
        feat = {k[5:]: v for k, v in arrays.items() if k.startswith("feat_")}
        model = {k[6:]: v for k, v in arrays.items() if k.startswith("model_")}
        return cls(SemanticConfig(**params["config"]), SessionFeaturizer.from_arrays(params["featurizer"], feat),
                   XLinearModel.from_arrays(params["model"], model))


def build_semantic_arm(queries: Sequence[str], item_ids, item_texts: Sequence[str],
                       config: SemanticConfig | None = None, *, item_text_pairs: bool = False) -> SemanticArm:
    """Train the semantic arm on ``(queries[j], item_ids[j])`` pairs (build code).

    Parameters
    ----------
    queries : sequence of str, length n_pairs
        Normalised training queries; duplicates of a pair count once, empty queries are skipped.
    item_ids : int array (n_pairs,), in ``[0, n_items)``
    item_texts : sequence of str, length n_items
        Normalised item texts; embed the items without training queries in the label tree.
    config : SemanticConfig
    item_text_pairs : bool, default False
        Also train on ``(item_texts[i], i)`` for every item with a non-empty text (each item then
        has a positive, so items never queried in training can be ranked; a doc-as-query
        augmentation, off by default).

    Returns
    -------
    SemanticArm

    Raises
    ------
    ValueError
        Lengths differ, an item id is out of range, no non-empty training query, or an empty
        catalogue.
    """
    config = SemanticConfig() if config is None else config
    if not isinstance(config, SemanticConfig):
        raise ValueError("config must be a SemanticConfig")
    queries = list(queries)
    n_items = len(item_texts)
    if n_items == 0:
        raise ValueError("item_texts: the catalogue is empty")
    items = np.asarray(item_ids, dtype=np.int64).reshape(-1)
    if len(queries) != items.size:
        raise ValueError("queries and item_ids must have the same length")
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"item_ids must lie in [0, {n_items})")
    pair_set = {(q, i) for q, i in zip(queries, items.tolist()) if q}
    if item_text_pairs:
        pair_set.update((t, i) for i, t in enumerate(item_texts) if t)
    pairs = sorted(pair_set)
    if not pairs:
        raise ValueError("queries: no non-empty training query")
    distinct = sorted({q for q, _ in pairs})
    row_of = {q: j for j, q in enumerate(distinct)}

    featurizer = SessionFeaturizer(WordTfidf(min_df=config.min_df),
                                   CharTfidf(ngram_range=(3, 3), position_weighted=False, min_df=config.min_df))
    Q = featurizer.fit_transform([word_bigram_text(q) for q in distinct], distinct)
    rows = np.fromiter((row_of[q] for q, _ in pairs), dtype=np.int64, count=len(pairs))
    y = np.fromiter((i for _, i in pairs), dtype=np.int32, count=len(pairs))
    X = Q[rows]

    # PIFA: label embedding = sum of its training instances' features (normalised by the tree
    # builder); items without instances fall back to their own text.
    Y = sp.csr_matrix((np.ones(y.size, dtype=np.float32), (y, np.arange(y.size))), shape=(n_items, y.size))
    emb = (Y @ X).tocsr()
    cold = np.flatnonzero(np.diff(emb.indptr) == 0)
    if cold.size:
        texts = [item_texts[i] for i in cold.tolist()]
        T = featurizer.transform([word_bigram_text(t) for t in texts], texts)
        sel = sp.csr_matrix((np.ones(cold.size, dtype=np.float32), (cold, np.arange(cold.size))),
                            shape=(n_items, cold.size))
        emb = (emb + sel @ T).tocsr()
    tree = build_label_tree(_label_texts(n_items), emb.astype(np.float32),
                            TreeConfig(kind="kmeans", max_leaf_size=config.max_leaf_size, seed=config.tree_seed),
                            n_threads=config.n_threads)
    model = XLinearModel.train(X, y, tree, config.train_config())
    return SemanticArm(config, featurizer, model)
