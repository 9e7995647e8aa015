"""Serving-side completion: load an artifact, answer (session, prefix, k) with ranked completions.

Default path (issue 4, when the artifact has a completion ranker): every completion arm of
``qac.arms`` (session-aware XR-Linear, MPC with online counts, the user's own history, the session
follow-up memory, suffix completions, typo-tolerant, MPC back-off) proposes candidates, and the
learned ranker orders their union -- ``qac.ranking.CompletionPipeline``, the completion instance of
the Search pipeline. Blocked completions (``qac.blocklist``) are dropped; the cascade below fills up
to ``k``. :meth:`Completer.observe` applies feedback (the query the user issued) online.

Cascade path (artifacts without a ranker, ``InferenceConfig.ranked = False``, and the fill)
(Yadav et al., KDD 2021, with PECOS ``examples/qp2q`` conventions):

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

import numpy as np

from qac import arms as A
from qac.artifacts import arrays_to_strings, load_artifact
from qac.blocklist import Blocklist
from qac.config import BuildConfig, InferenceConfig
from qac.features import SessionFeaturizer
from qac.history import KeyedQueryCounts
from qac.mpc import MostPopularCompletion
from qac.suffix import SuffixCompletion
from qac.text import normalize_prefix, normalize_query
from qac.xmr.model import XLinearModel
from retrieval.arms.base import Context

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
        Ranked path: the ranker's score; completions filled in after the ranked ones get the last
        ranked score minus 1, 2, ... (so scores never increase down the list). Cascade path:
        source-specific (XR-Linear path score in (0, 1] for ``"xr_linear"``; training frequency of the
        query for ``"mpc"``/``"mpc_backoff"`` and of the suffix for ``"suffix"``). The list order is
        the ranking.
    source : str
        The arm that proposed it (the first of ``qac.ranking.ARM_NAMES`` that did): ``"xr_linear"``,
        ``"mpc"``, ``"user_history"``, ``"follow_up"``, ``"suffix"`` (typed words + a popular query
        suffix), ``"typo"`` (completes a prefix at edit distance 1) or ``"mpc_backoff"`` (completes a
        shorter prefix only).
    highlight : (int, int)
        ``[start, end)`` in code points of ``text``: the leading part that matches the normalised
        typed prefix (``end = len(prefix)`` when the completion starts with it; shorter for typo and
        back-off completions).
    """

    text: str
    score: float
    source: str
    highlight: tuple[int, int] = (0, 0)


def _highlight(text: str, prefix: str) -> tuple[int, int]:
    if text.startswith(prefix):
        return (0, len(prefix))
    return (0, len(os.path.commonprefix((text, prefix))))


class Completer:
    """Session-aware completer over a loaded completion artifact.

    Thread-safe: the model keeps per-thread scratch space; everything else is read-only.
    """

    def __init__(self, featurizer: SessionFeaturizer, model: XLinearModel, labels: list[str],
                 mpc: MostPopularCompletion, suffix: SuffixCompletion, inference: InferenceConfig,
                 config: BuildConfig | None = None, version: str = "", *,
                 user_history: KeyedQueryCounts | None = None, follow_up: KeyedQueryCounts | None = None,
                 ranker=None, blocklist: Blocklist | None = None, online: KeyedQueryCounts | None = None,
                 exclude_arms: tuple[str, ...] = ()):
        self.featurizer = featurizer
        self.model = model
        self.labels = labels
        self.mpc = mpc
        self.suffix = suffix
        self.config = config or BuildConfig()
        self.inference = inference
        self.version = version
        empty = KeyedQueryCounts.from_dict
        self.user_history = user_history if user_history is not None else empty({})
        self.follow_up = follow_up if follow_up is not None else empty({})
        self.online = online if online is not None else empty({})
        self.ranker = ranker
        self.blocklist = blocklist or Blocklist()
        self.exclude_arms = tuple(exclude_arms)
        self.arms = self._make_arms()
        self.pipeline = self._make_pipeline()
        self._rng = np.random.default_rng(0)  # the fixed policy draws nothing

    def _make_arms(self) -> dict:
        inf = self.inference
        mpc_arm = A.MpcArm(self.mpc, self.online)
        arms = [A.XrLinearArm(self), mpc_arm, A.UserHistoryArm(self.user_history),
                A.FollowUpArm(self.follow_up), A.SuffixArm(self.suffix),
                A.TypoArm(self.mpc, inf.typo_min_exact), A.BackoffArm(self.mpc, inf.typo_min_exact)]
        return {a.name: a for a in arms}

    def _make_pipeline(self):
        if self.ranker is None or not self.inference.ranked:
            return None
        from qac.ranking import ARM_NAMES, CompletionPipeline

        arms = [self.arms[name] for name in ARM_NAMES if name not in self.exclude_arms]
        return CompletionPipeline(arms, self.ranker, self.arms["mpc"], self.arms["user_history"],
                                  self.arms["follow_up"], self.inference.per_arm)

    @classmethod
    def load(cls, artifact_dir: str | os.PathLike, inference: InferenceConfig | None = None,
             blocklist: Blocklist | None = None) -> "Completer":
        """Load a ``completion`` artifact written by ``qac build`` (arrays memory-mapped).

        ``blocklist`` adds query-time terms to the ones the artifact was built with.

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
        extra = {}
        names = set(art.components)
        for name in ("user_history", "follow_up"):
            if name in names:
                extra[name] = KeyedQueryCounts.from_arrays(*art.component(name))
        if "ranker" in names:
            from retrieval.ranker import Ranker

            extra["ranker"] = Ranker.from_arrays(*art.component("ranker"))
        built = Blocklist(art.params.get("blocklist", ()))
        extra["blocklist"] = built.union(blocklist) if blocklist else built
        return cls(SessionFeaturizer.from_arrays(fp, fa), XLinearModel.from_arrays(mp, ma), labels,
                   MostPopularCompletion.from_arrays(cp, ca), SuffixCompletion.from_arrays(sp, sa),
                   inference or config.inference, config, version, **extra)

    def with_inference(self, **changes) -> "Completer":
        """A completer sharing this one's arrays and online state with some inference parameters changed."""
        return self._copy(inference=replace(self.inference, **changes))

    def without_arms(self, names) -> "Completer":
        """A completer sharing this one's arrays and online state whose ranked union leaves out
        the arms ``names`` (their ranker features are 0): the ablation of ``qac evaluate``."""
        return self._copy(exclude_arms=tuple(names))

    def _copy(self, **changes) -> "Completer":
        kw = dict(inference=self.inference, exclude_arms=self.exclude_arms)
        kw.update(changes)
        return Completer(self.featurizer, self.model, self.labels, self.mpc, self.suffix, kw["inference"],
                         self.config, self.version, user_history=self.user_history, follow_up=self.follow_up,
                         ranker=self.ranker, blocklist=self.blocklist, online=self.online,
                         exclude_arms=kw["exclude_arms"])

    def warmup(self) -> None:
        """Prepare for serving: compile/run every kernel once on the served (memory-mapped) arrays,
        decode the MPC rows, then move everything loaded so far out of the garbage collector's reach
        (``gc.freeze``): a full collection over the label strings and MPC rows otherwise stalls a
        request for milliseconds about once per hundred calls."""
        self.model.warmup()
        self.mpc.warmup()
        self.mpc.sorted_queries()
        self.user_history.warmup()
        self.follow_up.warmup()
        self.suffix.warmup()
        if self.ranker is not None:
            self.ranker.warmup()
        for prefix in ("a", "new y", "www", "ebya", "qzqzqz"):
            self.complete(["weather"], prefix, 10, user_id="warmup")
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

    def complete(self, previous_queries: list[str], prefix: str, k: int = 10, *, user_id: str = "",
                 timestamp: int = 0) -> list[Completion]:
        """Ranked completions of ``prefix`` given the session's previous queries (oldest first).

        Parameters
        ----------
        previous_queries : list of str
            Raw previous queries of the session (the last one is the session context). May be empty.
        prefix : str
            Raw text typed so far.
        k : int
            Number of completions, 1..100.
        user_id : str
            The user (for the user-history arm); ``""`` = anonymous.
        timestamp : int
            Unix seconds of the request (recency features); 0 = unknown.

        Returns
        -------
        list of Completion, at most k, distinct texts, none containing a blocklisted term, best first.

        Raises
        ------
        CompletionError
            ``k`` outside 1..100, or ``prefix`` empty.
        """
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise CompletionError("k", f"must be in 1..{MAX_K}, got {k!r}")
        if not prefix or not prefix.strip():
            raise CompletionError("prefix", "must not be empty")
        p = normalize_prefix(prefix)
        if self.pipeline is None or not p:
            prev = normalize_query(previous_queries[-1]) if previous_queries else ""
            return self._cascade(prev, p, k, [], set())
        ctx = self.context(previous_queries, user_id, timestamp)
        r = self.pipeline.retrieve(p, ctx, self.pipeline.budget, self._rng)
        # Only a blocklist can drop ranked completions: otherwise the top k is all that is needed.
        ids, scores, proposed = self.pipeline.rank(r, len(r.union_ids) if self.blocklist else k)
        names = self.pipeline.arm_names
        out: list[Completion] = []
        seen: set[str] = set()
        block = self.blocklist.blocks if self.blocklist else None
        for text, score, row in zip(ids, scores.tolist(), proposed.tolist()):
            if block is not None and block(text):
                continue
            seen.add(text)
            source = names[row.index(True)] if True in row else names[0]
            out.append(Completion(text, score, source, _highlight(text, p)))
            if len(out) == k:
                return out
        # The XR-Linear arm's candidates were in the union already: fill from MPC, suffixes, back-off,
        # scored below the ranked ones so that the scores keep the list's order.
        n_ranked = len(out)
        # An arm that returned fewer than per_arm candidates has nothing more: the fill skips it.
        per_arm = self.pipeline.per_arm
        exhausted = frozenset(name for name, ids in zip(names, r.arm_ids)
                              if name in (SOURCE_MPC, SOURCE_SUFFIX) and len(ids) < per_arm)
        out = self._cascade("", p, k, out, seen, model=False, exhausted=exhausted)
        floor = out[n_ranked - 1].score if n_ranked else 0.0
        for i in range(n_ranked, len(out)):
            c = out[i]
            out[i] = Completion(c.text, floor - (i - n_ranked + 1), c.source, c.highlight)
        return out

    @staticmethod
    def context(previous_queries: list[str], user_id: str = "", timestamp: int = 0) -> Context:
        """The arms' request context: normalised previous queries (empty ones dropped)."""
        prevs = tuple(q for q in map(normalize_query, previous_queries) if q)
        return Context(user_id=user_id, previous_queries=prevs, timestamp=int(timestamp),
                       session_position=len(prevs))

    def arm_complete(self, arm: str, previous_queries: list[str], prefix: str, k: int = 10, *,
                     user_id: str = "", timestamp: int = 0) -> list[str]:
        """One arm alone: its top ``k`` candidates for the request, in the arm's own order
        (for the per-arm evaluation; no blocklist, no fill)."""
        p = normalize_prefix(prefix)
        texts, _ = self.arms[arm].retrieve(p, self.context(previous_queries, user_id, timestamp), k)
        return list(texts[:k])

    def observe(self, user_id: str, previous_query: str, query: str, timestamp: int) -> None:
        """Online learning from one issued (or accepted) query: the global counts, the user's history
        and the follow-up memory of the previous query. Visible to the next call.

        ``previous_query`` and ``query`` are raw (normalised here); an empty normalised query is
        ignored. Not thread-safe with itself: the state store serialises feedback."""
        q = normalize_query(query)
        if not q:
            return
        ts = int(timestamp)
        self.online.observe(A.GLOBAL_KEY, q, ts)
        if user_id:
            self.user_history.observe(user_id, q, ts)
        prev = normalize_query(previous_query) if previous_query else ""
        if prev and prev != q:
            self.follow_up.observe(prev, q, ts)

    def online_state_arrays(self) -> dict:
        """Snapshot of everything :meth:`observe` changed: ``{name/key: array}``."""
        out = {}
        for name, store in (("global", self.online), ("user_history", self.user_history),
                            ("follow_up", self.follow_up)):
            for key, value in store.state_arrays().items():
                out[f"{name}/{key}"] = value
        return out

    def load_online_state(self, arrays) -> None:
        """Inverse of :meth:`online_state_arrays` (replaces the online state)."""
        for name, store in (("global", self.online), ("user_history", self.user_history),
                            ("follow_up", self.follow_up)):
            prefix = f"{name}/"
            store.load_state({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})

    def reset_online(self) -> None:
        """Forget every online update (back to the built artifact)."""
        for store in (self.online, self.user_history, self.follow_up):
            store.reset_online()

    def _cascade(self, prev: str, p: str, k: int, out: list[Completion], seen: set[str], *,
                 model: bool = True, exhausted: frozenset = frozenset()) -> list[Completion]:
        """XR-Linear, then MPC, suffix completions, MPC back-off (appending to ``out`` up to ``k``);
        arms left out by :meth:`without_arms` are left out here too (back-off always runs), and so
        are the sources in ``exhausted`` (every completion they have is in ``seen`` already)."""
        block = self.blocklist.blocks if self.blocklist else (lambda t: False)

        def add(text: str, score: float, source: str) -> bool:
            if text in seen or block(text):
                return False
            seen.add(text)
            out.append(Completion(text, score, source, _highlight(text, p)))
            return len(out) == k

        skip = (*self.exclude_arms, *exhausted)  # an ablation leaves the arm out of the fill too
        if p and model and SOURCE_MODEL not in skip:
            ids, scores = self.model_candidates(prev, p, max(k, self.inference.n_model_candidates))
            for i, s in zip(ids, scores):
                if add(self.labels[i], float(s), SOURCE_MODEL):
                    return out
        for text, count in self.mpc.top_k(p, k) if (p and SOURCE_MPC not in skip) else ():
            if add(text, float(count), SOURCE_MPC):
                return out
        if self.inference.suffix_completions and p and SOURCE_SUFFIX not in skip:
            for text, count, _ in self.suffix.complete(p, k - len(out) + 10, seen):
                if add(text, float(count), SOURCE_SUFFIX):
                    return out
        for text, count, matched in self.mpc.top_k_backoff(p, k + len(out)):
            if add(text, float(count), SOURCE_MPC if matched == len(p) else SOURCE_MPC_BACKOFF):
                break
        return out
