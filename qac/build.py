"""Offline build of the completion index: log -> sessions -> features -> label tree -> XR-Linear.

Writes one artifact directory (kind ``"completion"``) holding every component the serving side needs:
the featurizer, the label strings, the label tree, the per-level ranker weights and the
most-popular-completion trie. Serving code never imports this module.
"""
from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from qac.artifacts import save_artifact, strings_to_arrays, write_artifact_files
from qac.blocklist import Blocklist
from qac.config import BuildConfig
from qac.features import CharTfidf, SessionFeaturizer, WordTfidf
from qac.history import KeyedQueryCounts
from qac.logs import CompletionPoint, LogReadResult, SessionConfig, make_points, read_aol_log, split_sessions
from qac.mpc import MostPopularCompletion
from qac.suffix import SuffixCompletion
from qac.xmr.model import TrainConfig, XLinearModel
from qac.xmr.tree import TreeConfig, build_label_tree

ARTIFACT_KIND = "completion"


@dataclass
class BuildReport:
    """What a build did: counts, per-stage wall and CPU seconds, artifact size (bytes).

    ``cpu_seconds`` is the process CPU time (user + system, all threads) spent in each stage, so
    ``cpu_seconds[s] / seconds[s]`` shows a stage's parallelism and stays meaningful on a loaded
    machine where wall time does not.
    """

    counts: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    cpu_seconds: dict = field(default_factory=dict)
    artifact_bytes: int = 0

    def format(self) -> str:
        lines = ["build summary:"]
        for k, v in self.counts.items():
            lines.append(f"  {k:<22} {v:>12,}" if isinstance(v, int) else f"  {k:<22} {v}")
        for k, v in self.seconds.items():
            cpu = self.cpu_seconds.get(k)
            lines.append(f"  time {k:<17} {v:>10.2f} s" + ("" if cpu is None else f"  (cpu {cpu:.2f} s)"))
        lines.append(f"  {'artifact size':<22} {self.artifact_bytes / 1e6:>10.1f} MB")
        return "\n".join(lines)


class _Stages:
    """Progress display: one line per stage with its wall time, to ``stream``."""

    def __init__(self, report: BuildReport, stream=sys.stderr, enabled: bool = True):
        self.report, self.stream, self.enabled = report, stream, enabled
        self.t0 = time.perf_counter()
        self.c0 = time.process_time()

    def run(self, name: str, fn: Callable):
        if self.enabled:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {name} ...", file=self.stream, flush=True)
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        self.report.seconds[name] = time.perf_counter() - t
        self.report.cpu_seconds[name] = time.process_time() - c
        return out


def label_set(points: Sequence[CompletionPoint]) -> tuple[list[str], np.ndarray]:
    """Sorted distinct next queries (the labels) and each point's label id (int32)."""
    labels = sorted({p.next_query for p in points})
    index = {q: i for i, q in enumerate(labels)}
    y = np.fromiter((index[p.next_query] for p in points), dtype=np.int32, count=len(points))
    return labels, y


def build_completion(
    log_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: BuildConfig | None = None,
    *,
    since=None,
    until=None,
    progress: bool = True,
    log: LogReadResult | None = None,
    publish: bool = True,
    blocklist: Blocklist | None = None,
) -> BuildReport:
    """Build every completion artifact from an AOL-format log into ``out_dir`` (atomically).

    Parameters
    ----------
    log_path : path
        AOL-format log (gzip or plain TSV).
    out_dir : path
        Artifact directory to create or replace.
    config : BuildConfig, optional
    since, until : date or ISO string, optional
        Only events in ``[since, until)`` are used (for dev splits).
    progress : bool
        Print one line per stage to stderr.
    log : LogReadResult, optional
        The already-read log (``since``/``until`` are then ignored), so a combined build reads once.
    publish : bool
        Write atomically (temporary sibling + rename). ``False`` writes straight into ``out_dir``,
        which must exist and be empty: for a caller assembling several artifacts in its own
        temporary directory and publishing them together.
    blocklist : Blocklist, optional
        Queries containing a blocked term are dropped before anything is built; the terms are
        stored in the artifact and applied again at query time.

    Returns
    -------
    BuildReport

    Raises
    ------
    ValueError
        If the log has no usable session pairs.
    """
    config = config or BuildConfig()
    blocklist = blocklist or Blocklist()
    report = BuildReport()
    st = _Stages(report, enabled=progress)
    t_start = time.perf_counter()

    if log is None:
        log = st.run("read log", lambda: read_aol_log(log_path, since=since, until=until))
    events = log.events
    if blocklist:
        events = [e for e in events if not blocklist.blocks(e.query)]
        report.counts["n_blocked_events"] = len(log.events) - len(events)
    sessions = st.run("sessions", lambda: split_sessions(events, SessionConfig(config.session_gap_seconds)))
    points = [pt for r in range(config.n_prefixes_per_pair) for pt in make_points(sessions, config.seed + r)]
    if not points:
        raise ValueError(f"{log_path}: no (previous query, next query) pairs in the selected period")
    report.counts.update(n_rows=log.n_rows, n_malformed=log.n_malformed, n_empty_queries=log.n_empty_queries,
                         n_events=len(events), n_sessions=len(sessions))
    params = {"log": str(log_path), "since": str(since) if since else None, "until": str(until) if until else None,
              "blocklist": blocklist.terms}
    extra = st.run("history", lambda: history_components(events, sessions))
    if config.ranker_tail_days > 0:
        ranker = st.run("ranker", lambda: _train_ranker(events, config, report, progress))
        if ranker is not None:
            extra["ranker"] = ranker.to_arrays()
    return _build_from_points(points, Counter(e.query for e in events), out_dir, config, report, st,
                              t_start, params, publish, extra)


def history_components(events, sessions) -> dict:
    """The user-history and follow-up stores of a log, as artifact components.

    ``user_history``: user id -> the user's queries (count = events, last time);
    ``follow_up``: query -> the queries that directly followed it in a session."""
    users = KeyedQueryCounts.build((e.user_id, e.query, e.timestamp) for e in events)
    follow = KeyedQueryCounts.build(
        (s.queries[j - 1], s.queries[j], s.timestamps[j]) for s in sessions for j in range(1, len(s.queries)))
    return {"user_history": users.to_arrays(), "follow_up": follow.to_arrays()}


def _train_ranker(events, config: BuildConfig, report: BuildReport, progress: bool):
    """Completion ranker: arms built on the events before the last ``ranker_tail_days`` days, fitted
    on that tail's completion points replayed in time order with online feedback
    (``qac.ranking.ranker_training_rows``). ``None`` when the tail or the head has no pairs."""
    import tempfile
    from dataclasses import replace as dc_replace

    from qac.completer import Completer
    from qac.ranking import ARM_NAMES, CompletionPipeline, ranker_training_rows
    from retrieval.ranker import Ranker, RankerConfig

    if not events:
        return None
    t_max = max(e.timestamp for e in events)
    cut = t_max - config.ranker_tail_days * 86400
    head = [e for e in events if e.timestamp < cut]
    tail = [e for e in events if e.timestamp >= cut]
    gap = SessionConfig(config.session_gap_seconds)
    tail_sessions = split_sessions(tail, gap)
    tail_points = [pt for r in range(config.ranker_prefixes_per_pair)
                   for pt in make_points(tail_sessions, config.seed + 1000 + r)]
    head_sessions = split_sessions(head, gap)
    head_points = make_points(head_sessions, config.seed)
    if not tail_points or not head_points:
        return None
    head_config = dc_replace(config, ranker_tail_days=0)
    with tempfile.TemporaryDirectory(prefix="qac-ranker-") as tmp:
        head_dir = Path(tmp) / "head"
        inner = BuildReport()
        _build_from_points(head_points, Counter(e.query for e in head), head_dir, head_config, inner,
                           _Stages(inner, enabled=False), time.perf_counter(), {}, True,
                           history_components(head, head_sessions))
        comp = Completer.load(head_dir)
        comp.mpc.warmup()
        # The ranker-less pipeline over every arm: training rows only need retrieve + features.
        pipeline = CompletionPipeline([comp.arms[name] for name in ARM_NAMES], None, comp.arms["mpc"],
                                      comp.arms["user_history"], comp.arms["follow_up"], config.inference.per_arm)
        X, y, gp, stats = ranker_training_rows(pipeline, tail_points, comp.observe)
    report.counts.update(ranker_points=stats["n_points"], ranker_groups=stats["n_groups"],
                         ranker_rows=int(len(y)))
    report.counts["ranker_union_recall"] = round(stats["union_recall"], 4)
    if stats["n_groups"] == 0:
        return None
    rcfg = RankerConfig(objective=config.ranker_objective, n_trees=config.ranker_trees,
                        max_leaf_nodes=config.ranker_leaves, seed=config.seed)
    return Ranker(rcfg).fit(X, y, gp)


def build_prefix_index(
    queries: Sequence[str],
    out_dir: str | os.PathLike,
    config: BuildConfig | None = None,
    *,
    progress: bool = True,
    source: str = "",
) -> BuildReport:
    """Build a prefix-only completion index (no session context) over a plain list of queries.

    Every distinct normalised query is one label and one training point (empty previous query, one
    seeded uniform prefix); MPC and suffix counts come from all occurrences. Used for query lists
    without users or times (e.g. the scale benchmark's 1M AOL queries).

    Parameters
    ----------
    queries : sequence of str
        Raw queries, one per occurrence.
    out_dir : path
        Artifact directory (written atomically).
    """
    from qac.text import normalize_query

    config = config or BuildConfig()
    report = BuildReport()
    st = _Stages(report, enabled=progress)
    t_start = time.perf_counter()

    def normalise() -> Counter:
        # Each distinct raw string is normalised once (the 1M AOL rows hold ~0.4M distinct).
        counts: Counter = Counter()
        for raw, c in Counter(queries).items():
            q = normalize_query(raw)
            if q:
                counts[q] += c
        return counts

    counts = st.run("normalise", normalise)
    rng = np.random.default_rng(config.seed)
    distinct = sorted(counts)
    cuts = rng.integers(1, np.fromiter(map(len, distinct), dtype=np.int64, count=len(distinct)) + 1)
    points = [CompletionPoint("", q[:c], q, "", 0) for q, c in zip(distinct, cuts.tolist())]
    report.counts.update(n_rows=len(queries), n_events=sum(counts.values()))
    return _build_from_points(points, counts, out_dir, config, report, st, t_start, {"log": source}, True)


def _build_from_points(points, query_counts: Counter, out_dir, config: BuildConfig, report: BuildReport,
                       st: _Stages, t_start: float, params: dict, publish: bool,
                       extra_components: dict | None = None) -> BuildReport:
    """Features, label tree, XR-Linear, MPC and suffix tries from training points; write the artifact."""
    labels, y = label_set(points)
    report.counts.update(n_points=len(points), n_labels=len(labels))
    prev = [p.prev_query for p in points]
    prefixes = [p.prefix for p in points]

    def fit_features():
        word = WordTfidf(allow_empty=not any(prev))  # a prefix-only index has no previous queries
        feat = SessionFeaturizer(word, CharTfidf(ngram_range=(1, 3), position_weighted=True))
        return feat, feat.fit_transform(prev, prefixes)

    featurizer, X = st.run("features", fit_features)
    report.counts["n_features"] = int(X.shape[1])
    report.counts["nnz_features"] = int(X.nnz)

    def fit_tree():
        emb = CharTfidf(ngram_range=(1, 3), position_weighted=True)
        tcfg = TreeConfig(kind=config.tree_kind, trie_depth=config.trie_depth,
                          max_leaf_size=config.max_leaf_size, seed=config.seed)
        return build_label_tree(labels, emb.fit_transform(labels), tcfg)

    tree = st.run("label tree", fit_tree)
    report.counts["tree_depth"] = int(tree.depth)

    tcfg = TrainConfig(C=config.C, max_iter=config.max_iter, eps=config.eps, threshold=config.threshold,
                       bias=config.bias, n_threads=config.n_threads, seed=config.seed)
    model = st.run("xr-linear", lambda: XLinearModel.train(X, y, tree, tcfg))

    def fit_mpc():
        queries = sorted(query_counts)
        return MostPopularCompletion.build(queries, np.array([query_counts[q] for q in queries], dtype=np.int64))

    mpc = st.run("mpc trie", fit_mpc)
    report.counts["n_mpc_queries"] = len(mpc)
    suffix = st.run("suffix trie", lambda: SuffixCompletion.build(query_counts.items()))
    report.counts["n_suffixes"] = len(suffix)

    def save():
        flat, ptr = strings_to_arrays(labels)
        components = {
            "featurizer": featurizer.to_arrays(),
            "labels": ({"n_labels": len(labels)}, {"labels_flat": flat, "labels_ptr": ptr}),
            "model": model.to_arrays(),
            "mpc": mpc.to_arrays(),
            "suffix": suffix.to_arrays(),
            **(extra_components or {}),
        }
        all_params = {"config": config.to_dict(), "counts": report.counts, **params,
                      "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if publish:
            return save_artifact(out_dir, ARTIFACT_KIND, all_params, components)
        write_artifact_files(Path(out_dir), ARTIFACT_KIND, all_params, components)
        return Path(out_dir)

    path = st.run("save", save)
    report.seconds["total"] = time.perf_counter() - t_start
    report.cpu_seconds["total"] = time.process_time() - st.c0
    report.artifact_bytes = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
    return report
