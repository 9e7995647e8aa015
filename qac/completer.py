"""Serving-side completion: load an artifact, answer (session, prefix, k) with ranked completions.

Path of one request (Yadav et al., KDD 2021, with PECOS ``examples/qp2q`` conventions):

1. normalise the previous query and the prefix as qp2q does;
2. featurise ``l2norm([word TF-IDF(previous query) | position-weighted char TF-IDF(prefix)])``;
3. XR-Linear beam search down the trie-tree hybrid label tree, restricted to tree nodes holding a
   label that starts with the prefix (the labels starting with a prefix are one id range because
   label ids follow sorted order);
4. fill up to k from most-popular-completion (MPC) over all training queries that start with the
   prefix;
5. then with synthetic completions: the typed words followed by popular query suffixes that start
   with the rest of the prefix (Mitra & Craswell, CIKM 2015), for the many prefixes whose query was
   never seen whole;
6. then MPC with back-off to shorter prefixes, so a request never comes back empty.

Never does work proportional to the number of labels per request.
"""
from __future__ import annotations

import bisect
import gc
import os
from dataclasses import dataclass, replace
from pathlib import Path

from qac.artifacts import arrays_to_strings, load_artifact
from qac.config import BuildConfig, InferenceConfig
from qac.features import SessionFeaturizer
from qac.mpc import MostPopularCompletion
from qac.suffix import SuffixCompletion
from qac.text import normalize_prefix, normalize_query
from qac.xmr.model import XLinearModel

ARTIFACT_KIND = "completion"
MAX_K = 100

SOURCE_MODEL = "xr_linear"
SOURCE_MPC = "mpc"
SOURCE_SUFFIX = "suffix"
SOURCE_MPC_BACKOFF = "mpc_backoff"


class CompletionError(ValueError):
    """Bad input to :meth:`Completer.complete`; ``field`` names the offending request field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Completion:
    """One suggestion.

    Attributes
    ----------
    text : str
        The completed (normalised) query.
    score : float
        Source-specific score: XR-Linear path score in (0, 1] for ``"xr_linear"``; training
        frequency of the query for ``"mpc"``/``"mpc_backoff"`` and of the suffix for ``"suffix"``.
        The list order is the ranking.
    source : str
        ``"xr_linear"``, ``"mpc"``, ``"suffix"`` (typed words + a popular query suffix) or
        ``"mpc_backoff"`` (completes a shorter prefix only, so does not start with the prefix).
    """

    text: str
    score: float
    source: str


class Completer:
    """Session-aware completer over a loaded completion artifact.

    Thread-safe: the model keeps per-thread scratch space; everything else is read-only.
    """

    def __init__(self, featurizer: SessionFeaturizer, model: XLinearModel, labels: list[str],
                 mpc: MostPopularCompletion, suffix: SuffixCompletion, inference: InferenceConfig,
                 config: BuildConfig | None = None, version: str = ""):
        self.featurizer = featurizer
        self.model = model
        self.labels = labels
        self.mpc = mpc
        self.suffix = suffix
        self.config = config or BuildConfig()
        self.inference = inference
        self.version = version

    @classmethod
    def load(cls, artifact_dir: str | os.PathLike, inference: InferenceConfig | None = None) -> "Completer":
        """Load a ``completion`` artifact written by ``qac build`` (arrays memory-mapped).

        Raises
        ------
        qac.artifacts.ArtifactError
            Missing or corrupted artifact.
        """
        art = load_artifact(artifact_dir, ARTIFACT_KIND)
        config = BuildConfig.from_dict(art.params["config"])
        fp, fa = art.component("featurizer")
        mp, ma = art.component("model")
        lp, la = art.component("labels")
        cp, ca = art.component("mpc")
        sp, sa = art.component("suffix")
        labels = arrays_to_strings(la["labels_flat"], la["labels_ptr"])
        version = f"{Path(artifact_dir).name}@{art.params.get('built_at', '')}"
        return cls(SessionFeaturizer.from_arrays(fp, fa), XLinearModel.from_arrays(mp, ma), labels,
                   MostPopularCompletion.from_arrays(cp, ca), SuffixCompletion.from_arrays(sp, sa),
                   inference or config.inference, config, version)

    def with_inference(self, **changes) -> "Completer":
        """A completer sharing this one's arrays with some inference parameters changed."""
        return Completer(self.featurizer, self.model, self.labels, self.mpc, self.suffix,
                         replace(self.inference, **changes), self.config, self.version)

    def warmup(self) -> None:
        """Prepare for serving: compile/run every kernel once on the served (memory-mapped) arrays,
        decode the MPC rows, then move everything loaded so far out of the garbage collector's reach
        (``gc.freeze``): a full collection over the label strings and MPC rows otherwise stalls a
        request for milliseconds about once per hundred calls."""
        self.model.warmup()
        self.mpc.warmup()
        self.suffix.warmup()
        for prefix in ("a", "new y", "www"):
            self.complete(["weather"], prefix, 10)
            self.complete([], prefix, 10)
        gc.collect()
        gc.freeze()

    def label_range(self, prefix: str) -> tuple[int, int]:
        """Id range ``[lo, hi)`` of the labels that start with ``prefix`` (labels are sorted)."""
        lo = bisect.bisect_left(self.labels, prefix)
        hi = bisect.bisect_left(self.labels, prefix + "\U0010ffff", lo)
        return lo, hi

    def model_candidates(self, prev_query: str, prefix: str, n: int) -> tuple[list[int], list[float]]:
        """XR-Linear candidates (label ids, path scores) that start with the normalised ``prefix``."""
        lo, hi = self.label_range(prefix)
        if lo >= hi:
            return [], []
        idx, val = self.featurizer.transform_one(prev_query, prefix)
        inf = self.inference
        ids, scores = self.model.predict_one(
            idx, val, beam_size=inf.beam_size, topk=n, post_processor=inf.post_processor,
            label_range=(lo, hi) if inf.prefix_constrained else None,
        )
        out_ids, out_scores = [], []
        for i, s in zip(ids.tolist(), scores.tolist()):
            if lo <= i < hi:
                out_ids.append(i)
                out_scores.append(s)
        return out_ids, out_scores

    def complete(self, previous_queries: list[str], prefix: str, k: int = 10) -> list[Completion]:
        """Ranked completions of ``prefix`` given the session's previous queries (oldest first).

        Parameters
        ----------
        previous_queries : list of str
            Raw previous queries of the session; only the last one is used as context here.
            May be empty (prefix-only completion).
        prefix : str
            Raw text typed so far.
        k : int
            Number of completions, 1..100.

        Returns
        -------
        list of Completion, at most k, distinct texts, best first.

        Raises
        ------
        CompletionError
            ``k`` outside 1..100, or ``prefix`` empty.
        """
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise CompletionError("k", f"must be in 1..{MAX_K}, got {k!r}")
        if not prefix or not prefix.strip():
            raise CompletionError("prefix", "must not be empty")
        prev = normalize_query(previous_queries[-1]) if previous_queries else ""
        p = normalize_prefix(prefix)
        out: list[Completion] = []
        seen: set[str] = set()
        if p:
            ids, scores = self.model_candidates(prev, p, max(k, self.inference.n_model_candidates))
            for i, s in zip(ids, scores):
                text = self.labels[i]
                if text not in seen:
                    seen.add(text)
                    out.append(Completion(text, float(s), SOURCE_MODEL))
                    if len(out) == k:
                        return out
        for text, count in self.mpc.top_k(p, k) if p else ():
            if text not in seen:
                seen.add(text)
                out.append(Completion(text, float(count), SOURCE_MPC))
                if len(out) == k:
                    return out
        if self.inference.suffix_completions and p:
            for text, count, _ in self.suffix.complete(p, k - len(out), seen):
                seen.add(text)
                out.append(Completion(text, float(count), SOURCE_SUFFIX))
            if len(out) == k:
                return out
        for text, count, matched in self.mpc.top_k_backoff(p, k + len(out)):
            if text in seen:
                continue
            seen.add(text)
            out.append(Completion(text, float(count), SOURCE_MPC if matched == len(p) else SOURCE_MPC_BACKOFF))
            if len(out) == k:
                break
        return out
