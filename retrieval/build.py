"""Offline build of one search catalogue: catalogue, arms, query statistics, policy, ranker.

Two sources of interactions, one artifact layout (``kind = "search"``):

- AOL: items are the sites clicked in the training log (normalised URLs, text = URL tokens); every
  (query event, clicked site) is an interaction with its user and time;
- Home Depot: items are the products of ``products.tsv.gz``; every judged (search term, product) pair
  of the training judgments is an interaction weighted by its grade (no users, no times).

Serving never imports this module.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from qac.artifacts import strings_to_arrays, write_artifact_files
from retrieval.arms.bm25 import BM25Arm
from retrieval.arms.chargram import CharGramArm
from retrieval.arms.history import build_history_arm
from retrieval.arms.memory import build_memory_arm
from retrieval.arms.popularity import PopularityArm
from retrieval.arms.semantic import SemanticConfig, build_semantic_arm
from retrieval.catalog import Catalog, expanded_texts
from retrieval.growth import AOL_GROWTH, CLOSED, CatalogGrowth
from retrieval.pair_model import TermPairConfig
from retrieval.pipeline import ARM_FEATURES, CONTEXT_FEATURES
from retrieval.policy import PolicyConfig, build_policy

ARTIFACT_KIND = "search"


@dataclass(frozen=True)
class Interactions:
    """Training interactions of one catalogue, parallel arrays of length n.

    Attributes
    ----------
    queries : list of str (normalised)
    item_ids : int32 (n,)
    timestamps : int64 (n,) Unix seconds (0 when unknown)
    user_ids : list of str ("" when unknown)
    weights : float32 (n,) click weight (1 for clicks, the grade for judgments)
    """

    queries: list
    item_ids: np.ndarray
    timestamps: np.ndarray
    user_ids: list
    weights: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.queries)
        for name in ("item_ids", "timestamps", "user_ids", "weights"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: length {len(getattr(self, name))} != {n} queries")


@dataclass(frozen=True)
class SearchBuildConfig:
    """Search build parameters (the one place their defaults live)."""

    # Joint per-allocation model: 0.509 vs 0.490 (per-arm noisy-or) union recall@20 on the AOL dev replay.
    policy: PolicyConfig = PolicyConfig(kind="joint")
    default_budget: int = 100
    seed: int = 0
    # Items added while serving (retrieval.growth): closed unless the catalogue's config opens it.
    growth: CatalogGrowth = CLOSED
    # Graded judgments only: the ranker's term-pair column (retrieval.pair_model); None = without it.
    pair: TermPairConfig | None = None
    # The semantic (XR-Linear) arm, in the served arms and in those the stack and ranker train on.
    semantic: SemanticConfig = SemanticConfig()

    def __post_init__(self) -> None:
        if not 1 <= self.default_budget <= 1000:
            raise ValueError(f"default_budget: must be in 1..1000, got {self.default_budget}")
        if not isinstance(self.semantic, SemanticConfig):
            raise ValueError(f"semantic: must be a SemanticConfig, got {type(self.semantic).__name__}")


# Home Depot: the judged replay's context features barely predict which arm holds the relevant
# products, and with ridge 1 the per-action models chase that noise between near-equal allocations.
# Inner dev split of hd_train (75/25 by search term, seed 1; `qac evaluate search` replay), union
# recall@100 with the learned fusion arm: ridge 1 0.850, 10 0.856, 100 0.859, 1000 0.860, 10^4 0.859.
# The term-pair column: inner split nDCG@10 of the ranker 0.9381 -> 0.9394 (retrieval.pair_model).
HOMEDEPOT_BUILD_CONFIG = SearchBuildConfig(policy=PolicyConfig(kind="joint", ridge=1000.0), pair=TermPairConfig())
# AOL with the stacked fusion arm: that arm alone is the best allocation on most queries, and ridge
# 1000 keeps the per-allocation models from chasing noise away from it. Inner split (train before
# 2006-05-11, replay 05-11..17; bench.bandit_sim over bench.bandit_cache), union recall@20:
# ridge 1 0.5446, ridge 1000 0.5484 (the stack arm alone 0.5500).
# AOL sites are an open catalogue: a site first clicked while serving becomes an item.
AOL_BUILD_CONFIG = SearchBuildConfig(policy=PolicyConfig(kind="joint", ridge=1000.0), growth=AOL_GROWTH)


def aol_interactions(catalog: Catalog, events) -> Interactions:
    """Interactions from AOL click events (``retrieval.catalog.click_events``) on catalogue items."""
    q, ids, ts, us = [], [], [], []
    for e in events:
        i = catalog.id_of(e.item_key)
        if i is not None and e.query:
            q.append(e.query)
            ids.append(i)
            ts.append(e.timestamp)
            us.append(e.user_id)
    return Interactions(q, np.asarray(ids, np.int32), np.asarray(ts, np.int64), us, np.ones(len(q), np.float32))


def judgment_interactions(catalog: Catalog, judgments) -> Interactions:
    """Interactions from graded judgments (weight = grade); unknown products are skipped."""
    q, ids, w = [], [], []
    for j in judgments:
        i = catalog.id_of(j.item_key)
        if i is not None and j.query:
            q.append(j.query)
            ids.append(i)
            w.append(j.grade)
    n = len(q)
    return Interactions(q, np.asarray(ids, np.int32), np.zeros(n, np.int64), [""] * n, np.asarray(w, np.float32))


def build_arms(catalog: Catalog, inter: Interactions, *, bm25_texts: Sequence[str] | None = None,
               bm25_b: float = 0.75, semantic_min_weight: float = 0.0, semantic_item_text_pairs: bool = False,
               semantic_config: SemanticConfig | None = None,
               analyzer: str = "qp2q", compounds: bool = False, learned_fusion: bool = False, text_index=None,
               timings: dict | None = None, report: dict | None = None) -> list:
    """Every arm of a catalogue, in the fixed order the pipeline, policy and ranker use.

    ``analyzer`` / ``compounds`` configure the text arms (:mod:`retrieval.analyzer`). With
    ``learned_fusion`` (graded interactions) the learned fusion arm of
    :func:`retrieval.arms.fusion.build_learned_fusion_arm` is appended last (``text_index``: the item
    text index its features use; its training summary goes to ``report["fusion"]``).
    ``semantic_config``: the semantic arm's :class:`SemanticConfig` (None = its defaults).
    """
    timings = {} if timings is None else timings

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        timings[f"arm {name}"] = time.perf_counter() - t
        return out

    keep = inter.weights >= semantic_min_weight
    arms = [
        timed("bm25", lambda: BM25Arm.build(list(bm25_texts if bm25_texts is not None else catalog.texts), b=bm25_b,
                                            analyzer=analyzer, compounds=compounds)),
        timed("chargram", lambda: CharGramArm.build(list(catalog.texts), analyzer=analyzer)),
        timed("memory", lambda: build_memory_arm(inter.queries, inter.item_ids, inter.timestamps, catalog.texts,
                                                 weights=inter.weights)),
        timed("semantic", lambda: build_semantic_arm([q for q, k in zip(inter.queries, keep) if k],
                                                     inter.item_ids[keep], catalog.texts, semantic_config,
                                                     item_text_pairs=semantic_item_text_pairs)),
        timed("popularity", lambda: PopularityArm.build(inter.item_ids.tolist(), catalog.n_items,
                                                        inter.weights.tolist())),
    ]
    if any(inter.user_ids):
        arms.append(timed("history", lambda: build_history_arm(inter.user_ids, inter.queries, inter.item_ids,
                                                               inter.timestamps, catalog.n_items,
                                                               weights=inter.weights)))
    if learned_fusion:
        from retrieval.arms.fusion import build_learned_fusion_arm

        fusion_report: dict = {}
        arms.append(timed("fusion", lambda: build_learned_fusion_arm(
            catalog.texts, inter.queries, inter.item_ids, inter.weights, analyzer=analyzer, text_index=text_index,
            chargram=next(a for a in arms if a.name == "chargram"), report=fusion_report)))
        if report is not None:
            report["fusion"] = {k: v for k, v in fusion_report.items() if k != "weights"}
    return arms


def query_counts_arrays(queries: Sequence[str]) -> tuple[dict, dict[str, np.ndarray]]:
    """Training frequency of every normalised query, as a persistable component."""
    counts = Counter(q for q in queries if q)
    keys = sorted(counts)
    flat, ptr = strings_to_arrays(keys)
    return {"n_queries": len(keys)}, {"queries_flat": flat, "queries_ptr": ptr,
                                      "counts": np.array([counts[k] for k in keys], dtype=np.int64)}


def _jsonable(obj):
    """Report dicts may hold numpy scalars/arrays; keep what JSON can carry."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not isinstance(v, np.ndarray)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def write_search_artifact(out_dir: Path, name: str, catalog: Catalog, arms: list, ranker, text_index,
                          item_stats: np.ndarray, inter: Interactions, config: SearchBuildConfig,
                          report: dict, analyzer: str = "qp2q", pair_model=None) -> None:
    """Write one catalogue's search artifact into the existing empty directory ``out_dir``
    (``pair_model``: the ranker's term-pair model, component ``pair_model``, when it reads one)."""
    policy = build_policy(config.policy, len(arms), len(CONTEXT_FEATURES), len(ARM_FEATURES))
    components = {
        "catalog": catalog.to_arrays(),
        "policy": policy.to_arrays(),
        "ranker": ranker.to_arrays(),
        "text_index": text_index.to_arrays(),
        "item_stats": ({}, {"item_stats": np.ascontiguousarray(item_stats, dtype=np.float32)}),
        "query_counts": query_counts_arrays(inter.queries),
    }
    if pair_model is not None:
        components["pair_model"] = pair_model.to_arrays()
    for arm in arms:
        components[f"arm_{arm.name}"] = arm.to_arrays()
    # ``analyzer``: serving normalises a query of this catalogue with it (retrieval.analyzer).
    params = {"catalog": name, "arms": [a.name for a in arms], "analyzer": analyzer,
              "ranker_kind": type(ranker).__name__,
              "ranker_arms": report.get("ranker_arms"), "ranker_budget": report.get("ranker_budget"),
              "config": asdict(config), "report": _jsonable(report),
              "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_artifact_files(out_dir, ARTIFACT_KIND, params, components)


def aol_search_arms(catalog: Catalog, query_events, timings: dict | None = None,
                    semantic_config: SemanticConfig | None = None) -> list:
    """The AOL arms (:func:`build_arms`) over ``catalog`` from the clicks of these query events
    (``qac.logs.QueryEvent``; clicks on sites outside the catalogue are ignored)."""
    from retrieval.catalog import click_events

    events = click_events(query_events)
    # Expanded texts (URL tokens + one training query per click) vary enormously in length; length
    # normalisation hurts there (dev recall@20: b=0.75 0.430, b=0.3 0.468, b=0 0.501).
    return build_arms(catalog, aol_interactions(catalog, events), bm25_texts=expanded_texts(catalog, events),
                      bm25_b=0.0, semantic_config=semantic_config, timings=timings)


def build_search_aol(log, out_dir: Path, config: SearchBuildConfig = AOL_BUILD_CONFIG, *,
                     ranker_budget: int = 50, stack_depth: int | None = 50) -> dict:
    """AOL search artifact from an already-read training log (items = clicked sites).

    With ``stack_depth`` the stacked fusion arm (:mod:`retrieval.arms.stack`) is appended last: its
    model is fitted on the log's last week (the last third of a log shorter than three weeks)
    replayed through arms built from the events before, and it pools the served arms' top
    ``stack_depth``. The ranker is trained without it. Inner split of the dev training log (train
    before 2006-05-11, replay 05-11..17), recall@20 of the arm alone: 0.550 against 0.511 for the
    best single arm (BM25).
    """
    from retrieval.arms.stack import build_stacked_fusion_arm
    from retrieval.catalog import aol_catalog, click_events, normalize_url
    from retrieval.ranker import RankerConfig, build_aol_ranker

    timings: dict = {}
    t0 = time.perf_counter()
    events = click_events(log)
    catalog = aol_catalog(events)
    inter = aol_interactions(catalog, events)
    arms = aol_search_arms(catalog, log.events, timings, config.semantic)
    base_arms = list(arms)
    stack_report: dict = {}
    if stack_depth is not None:
        t = time.perf_counter()
        times = [e.timestamp for e in log.events]
        # The last week trains the fusion; a log shorter than three weeks gives it its last third.
        holdout_days = min(7.0, (max(times) - min(times)) / 86400 / 3) if times else 7.0
        stack = build_stacked_fusion_arm(log.events, lambda url: catalog.id_of(normalize_url(url)), catalog.n_items,
                                         lambda early: aol_search_arms(catalog, early,
                                                                       semantic_config=config.semantic),
                                         depth=stack_depth,
                                         holdout_days=holdout_days, report=stack_report)
        arms.append(stack.bind(base_arms))
        timings["arm stack"] = time.perf_counter() - t
    t = time.perf_counter()
    # Pointwise histogram gradient boosting on the click labels: LambdaMART over exact scikit-learn
    # trees took ~550 s on one week of clicks; this fits in seconds.
    rcfg = RankerConfig(objective="regression", n_trees=100, learning_rate=0.1, max_leaf_nodes=31,
                        min_samples_leaf=40, seed=config.seed)
    # Candidate generation (every arm, every event) dominates: cap the training events and keep a
    # small internal test share (the real evaluation is `qac evaluate search`).
    ranker, text_index, rep = build_aol_ranker(catalog, events, arms=base_arms, budget=ranker_budget, config=rcfg,
                                               seed=config.seed, test_fraction=0.05, max_train_groups=20_000)
    timings["ranker"] = time.perf_counter() - t
    report = {"n_items": catalog.n_items, "n_interactions": len(inter.queries), "seconds": timings,
              "ranker": {k: v for k, v in rep.items() if k in ("test", "config", "n_train_groups", "n_test_groups")}}
    if stack_report:
        report["stack"] = stack_report
    out_dir.mkdir(parents=True, exist_ok=False)
    write_search_artifact(out_dir, "aol", catalog, arms, ranker, text_index, rep["item_stats"], inter, config,
                          {**report, "ranker_arms": [a.name for a in base_arms], "ranker_budget": ranker_budget})
    report["seconds"]["total"] = time.perf_counter() - t0
    return report


def build_search_homedepot(products_path, judgments_path, out_dir: Path,
                           config: SearchBuildConfig = HOMEDEPOT_BUILD_CONFIG, *, analyzer: str = "product",
                           ranker_grid=None) -> dict:
    """Home Depot search artifact: every product; interactions = the training judgments (grade-weighted).

    Titles and search terms go through the ``analyzer`` (default ``"product"``: sizes, fractions,
    hyphenated compounds, units, plurals; :mod:`retrieval.analyzer`), recorded in the artifact so
    serving normalises queries the same way. Arms: BM25 (compound terms), character trigrams, memory,
    semantic, popularity, and the learned fusion of BM25 over titles + relevant training queries with
    the trigrams (:func:`retrieval.arms.fusion.build_learned_fusion_arm`).

    The ranker uses text and item-statistics features only: the memory and semantic arms are built
    from the same judgments, so their scores on training queries would teach the ranker to trust them
    far more than they deserve on unseen search terms.
    """
    from retrieval.catalog import load_homedepot_catalog, load_judgments
    from retrieval.ranker import HOMEDEPOT_GRID, build_homedepot_ranker
    from retrieval.ranker_features import ItemTextIndex

    timings: dict = {}
    t0 = time.perf_counter()
    catalog = load_homedepot_catalog(products_path, analyzer=analyzer)
    judgments = load_judgments(judgments_path, analyzer=analyzer)
    inter = judgment_interactions(catalog, judgments)
    text_index = ItemTextIndex.build(catalog.texts, analyzer=analyzer, match_features=analyzer != "qp2q")
    arm_report: dict = {}
    # 81% of the products relevant to an unseen search term never had a relevant training term, so the
    # semantic arm also learns (title -> product) pairs (dev recall@100 0.10 -> 0.34).
    # Learned fusion over a depth-200 pool: inner dev split recall@100 0.861 vs 0.833 for the RRF.
    arms = build_arms(catalog, inter, semantic_min_weight=2.5, semantic_item_text_pairs=True,
                      semantic_config=config.semantic, analyzer=analyzer,
                      compounds=analyzer != "qp2q", learned_fusion=True, text_index=text_index, timings=timings,
                      report=arm_report)
    t = time.perf_counter()
    ranker, text_index, rep = build_homedepot_ranker(catalog, judgments, arms=(), seed=config.seed,
                                                     text_index=text_index,
                                                     grid=HOMEDEPOT_GRID if ranker_grid is None else ranker_grid,
                                                     allow_linear=True, pair_config=config.pair)
    timings["ranker"] = time.perf_counter() - t
    report = {"n_items": catalog.n_items, "n_interactions": len(inter.queries), "seconds": timings,
              "analyzer": analyzer, "ranker": {k: v for k, v in rep.items() if k in ("test", "dev", "chosen")},
              **arm_report}
    out_dir.mkdir(parents=True, exist_ok=False)
    write_search_artifact(out_dir, "homedepot", catalog, arms, ranker, text_index, rep["item_stats"], inter, config,
                          {**report, "ranker_arms": []}, analyzer=analyzer, pair_model=rep["pair_model"])
    report["seconds"]["total"] = time.perf_counter() - t0
    return report


def build_all(log_path, out_dir, *, completion_config=None, catalog=None, judgments=None, since=None,
              until=None, search: bool = True, progress: bool = True, blocklist=None) -> dict:
    """``qac build``: every artifact there is data for, assembled in a temporary sibling directory and
    renamed into ``out_dir`` at the end (a crash never leaves a half-built index).

    ``blocklist`` (``qac.blocklist.Blocklist``): queries with a blocked term are left out of the
    completion index, and the terms are stored with it for query time.

    Layout: ``out_dir/`` = the completion artifact; ``out_dir/search/aol/`` (from the log's clicks);
    ``out_dir/search/homedepot/`` (when ``catalog`` and ``judgments`` are given).

    Returns
    -------
    dict with ``completion`` (BuildReport) and ``search`` (per-catalogue report dicts).
    """
    import shutil
    import sys
    import tempfile

    from qac.artifacts import publish_directory
    from qac.build import build_completion
    from qac.logs import read_aol_log

    if (catalog is None) != (judgments is None):
        raise ValueError("catalog and judgments: give both (Home Depot search) or neither")
    out = Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))

    def say(msg):
        if progress:
            print(msg, file=sys.stderr, flush=True)

    try:
        t = time.perf_counter()
        log = read_aol_log(log_path, since=since, until=until)
        say(f"read {log_path}: {log.n_rows:,} rows, {len(log.events):,} query events "
            f"({log.n_malformed:,} malformed) in {time.perf_counter() - t:.1f} s")
        completion = build_completion(log_path, tmp, completion_config, since=since, until=until,
                                      progress=progress, log=log, publish=False, blocklist=blocklist)
        reports: dict = {}
        if search:
            say("search (aol): catalogue, arms, ranker ...")
            reports["aol"] = build_search_aol(log, tmp / "search" / "aol")
            if catalog is not None:
                say("search (homedepot): catalogue, arms, ranker ...")
                reports["homedepot"] = build_search_homedepot(catalog, judgments, tmp / "search" / "homedepot")
        publish_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"completion": completion, "search": reports}


def main(argv=None) -> int:
    """``python -m retrieval.build --catalog PRODUCTS --judgments JUDGMENTS --out DIR``: the Home Depot
    search artifact alone, written to ``DIR/search/homedepot``; ``--log LOG --out DIR``: the AOL search
    artifact alone, ``DIR/search/aol`` (``qac build`` builds completion and both). ``--semantic-threshold``
    overrides the semantic arm's weight pruning threshold (:class:`SemanticConfig`) of the catalogue's
    build config."""
    import argparse
    import json
    import shutil
    import tempfile

    from qac.artifacts import publish_directory
    from qac.logs import read_aol_log

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--log")
    ap.add_argument("--catalog")
    ap.add_argument("--judgments")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--analyzer", default="product")
    ap.add_argument("--semantic-threshold", type=float, default=None,
                    help="prune semantic (XR-Linear) weights with |w| below this (default: SemanticConfig's)")
    args = ap.parse_args(argv)
    if (args.log is None) == (args.catalog is None or args.judgments is None):
        ap.error("give --log (AOL) or both --catalog and --judgments (Home Depot)")
    name = "aol" if args.log else "homedepot"
    config = AOL_BUILD_CONFIG if args.log else HOMEDEPOT_BUILD_CONFIG
    if args.semantic_threshold is not None:
        try:
            config = replace(config, semantic=replace(config.semantic, threshold=args.semantic_threshold))
        except ValueError as e:
            ap.error(f"--semantic-threshold: {e}")
    out = (args.out / "search" / name).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out.parent))
    try:
        if args.log:
            report = build_search_aol(read_aol_log(args.log), tmp / name, config)
        else:
            report = build_search_homedepot(args.catalog, args.judgments, tmp / name, config,
                                            analyzer=args.analyzer)
        publish_directory(tmp / name, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(_jsonable(report), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
