"""Replayed stack-arm pools cached once, then the trees refitted and scored on the cache (AOL inner split).

Usage::

    /work/venv/bin/python -m bench.stack_pools cache --train-log runs/inner/train.tsv.gz \
        --val-log runs/inner/val.tsv.gz --segment eval --out runs/cache/eval.npz
    /work/venv/bin/python -m bench.stack_pools cache ... --segment w1 --out runs/cache/w1.npz   # w2, w3 ...
    /work/venv/bin/python -m bench.stack_pools fit --cache runs/cache --train w1 --eval eval \
        --denominator 24897 [--drop COLUMN ...] [--site-names] [--pool-max] [--log-loss]

``cache``: segment ``w<k>`` is the k-th last week of the training log replayed
(:func:`retrieval.arms.stack.replay_pools`, depth 50) through arms built on the events before it, as
:func:`retrieval.arms.stack.build_stacked_fusion_arm` does for k = 1; ``eval`` is the validation log
replayed through arms built on the whole training log (the served arm's situation). Saved: ``X``
(:func:`retrieval.arms.stack.pool_features`), ``y``, ``ptr``, ``n_clicks``, the pool item ``ids``, the
group ``queries`` and the column ``names``; ``eval`` also saves the catalogue keys (``keys.npy``).

``fit``: the build's trees (100 pointwise regression trees of 31 leaves, ``min_samples_leaf`` 100,
:class:`retrieval.ranker.Ranker`) on the named training segments, recall@20 / @100 of the model's
order of each eval pool over ``--denominator`` clicks (the inner week's 24,897 clicks; 0 = the
pools' catalogue clicks). Column experiments: ``--drop`` columns by name; ``--site-names`` appends
five site-name match columns (query without spaces equal to / inside the site's name, the name
inside the query, common-prefix ratio, the query's initials starting the name); ``--pool-max``
appends six columns minus their maximum over the pool; ``--log-loss`` fits
``HistGradientBoostingClassifier`` trees instead. The figures are in the README ("Stacked fusion
arm") and the :mod:`retrieval.arms.stack` docstring.
"""
from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import numpy as np

_COMMON_SLD = {"co", "com", "org", "net", "gov", "ac", "edu", "ne", "or"}
_NONALNUM = re.compile(r"[^0-9a-z]+")


def site_name(key: str) -> str:
    """The registrable name of a site key: ``"en.wikipedia.org"`` -> ``"wikipedia"``, ``"bbc.co.uk"`` -> ``"bbc"``."""
    labels = [x for x in key.split("/", 1)[0].split(".") if x]
    if len(labels) >= 2:
        labels = labels[:-1]
        if len(labels) >= 2 and labels[-1] in _COMMON_SLD:
            labels = labels[:-1]
    return _NONALNUM.sub("", labels[-1]) if labels else ""


def cache(args) -> None:
    from qac.logs import read_aol_log
    from retrieval.arms import stack as S
    from retrieval.build import aol_search_arms
    from retrieval.catalog import aol_catalog, click_events, normalize_url

    t0 = time.perf_counter()
    log = read_aol_log(args.train_log)
    catalog = aol_catalog(click_events(log))
    events = sorted((e for e in log.events if e.query), key=lambda e: (e.timestamp, e.user_id))
    if args.segment == "eval":
        early = events
        val = read_aol_log(args.val_log)
        late = sorted((e for e in val.events if e.query and e.click_urls), key=lambda e: (e.timestamp, e.user_id))
    else:
        k = int(args.segment[1:])
        hi = events[-1].timestamp - (k - 1) * 7 * 86400
        lo = hi - 7 * 86400
        early = [e for e in events if e.timestamp <= lo]
        late = [e for e in events if lo < e.timestamp <= hi and e.click_urls]
    arms = [a for a in aol_search_arms(catalog, early) if a.name in S.STACK_SUB_ARMS]
    queries, pools = [], []
    featurise = S.pool_features

    def recording(query, context, arms_, depth, k=10.0, lists=None):
        ids, X = featurise(query, context, arms_, depth, k, lists)
        queries.append(query)
        pools.append(ids)
        return ids, X

    S.pool_features = recording
    try:
        X, y, ptr, n_clicks = S.replay_pools(arms, late, lambda u: catalog.id_of(normalize_url(u)), args.depth)
    finally:
        S.pool_features = featurise
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, X=X, y=y, ptr=ptr, n_clicks=n_clicks, ids=np.concatenate(pools) if pools else np.zeros(0, np.int32),
             queries=np.array(queries), names=np.array(S.feature_names([a.name for a in arms])))
    if args.segment == "eval":
        np.save(args.out.parent / "keys.npy", np.array(catalog.keys))
    print(f"{args.segment}: {len(early):,} events before, {len(late):,} replayed, {y.size:,} rows, "
          f"{int(y.sum()):,} clicked pool items of {n_clicks:,} catalogue clicks, {time.perf_counter() - t0:.0f} s")


def _site_name_columns(queries, ids, ptr, names) -> np.ndarray:
    out = np.zeros((ids.size, 5), np.float32)
    for g in range(ptr.size - 1):
        q = str(queries[g])
        qn = _NONALNUM.sub("", q)
        words = q.split()
        initials = "".join(w[0] for w in words) if len(words) >= 2 else ""
        for r in range(ptr[g], ptr[g + 1]):
            nm = names[ids[r]]
            if nm and qn:
                out[r] = (qn == nm, qn in nm, len(nm) >= 3 and nm in qn,
                          len(os.path.commonprefix([qn, nm])) / max(len(nm), len(qn)),
                          bool(initials) and nm.startswith(initials))
    return out


def _pool_max_columns(X, ptr, cols) -> np.ndarray:
    sizes = np.diff(ptr)
    nonempty = sizes > 0
    group = np.repeat(np.arange(sizes.size), sizes)
    out = []
    for c in cols:
        mx = np.zeros(sizes.size, np.float32)
        mx[nonempty] = np.maximum.reduceat(X[:, c], ptr[:-1][nonempty])
        out.append(X[:, c] - mx[group])
    return np.stack(out, 1)


def fit(args) -> None:
    from retrieval.ranker import Ranker, RankerConfig

    site_names = None
    if args.site_names:
        site_names = [site_name(k) for k in np.load(args.cache / "keys.npy").tolist()]

    def rows(seg):
        d = np.load(args.cache / f"{seg}.npz")
        names = d["names"].tolist()
        X = d["X"]
        parts = [X[:, [i for i, n in enumerate(names) if n not in args.drop]]]
        if args.pool_max:
            parts.append(_pool_max_columns(X, d["ptr"], [names.index(n) for n in (
                "log_popularity", "log_query_item_clicks", "log_user_item_clicks", "bm25:log_score",
                "semantic:log_score", "chargram:log_score")]))
        if site_names is not None:
            parts.append(_site_name_columns(d["queries"], d["ids"], d["ptr"], site_names))
        return np.hstack(parts).astype(np.float32), d

    t0 = time.perf_counter()
    blocks = [rows(seg) for seg in args.train]
    X = np.vstack([b[0] for b in blocks])
    y = np.concatenate([b[1]["y"] for b in blocks])
    ptr = np.concatenate([[0]] + [b[1]["ptr"][1:] + off for b, off in
                                  zip(blocks, np.cumsum([0] + [b[1]["y"].size for b in blocks[:-1]]))])
    cfg = RankerConfig(objective="regression", n_trees=args.trees, learning_rate=0.1, max_leaf_nodes=args.leaves,
                       min_samples_leaf=100)
    if args.log_loss:
        from sklearn.ensemble import HistGradientBoostingClassifier

        clf = HistGradientBoostingClassifier(loss="log_loss", learning_rate=0.1, max_iter=args.trees,
                                             max_leaf_nodes=args.leaves, min_samples_leaf=100, early_stopping=False,
                                             random_state=0).fit(X, y)
        model = Ranker(cfg)
        model._load_hgb(clf)  # raw log-odds: the same order as the predicted probability
    else:
        model = Ranker(cfg).fit(X, y, ptr)
    Xe, e = rows(args.eval)
    s = np.asarray(model.score(Xe), np.float64)
    ye, ids, eptr = e["y"], e["ids"], e["ptr"]
    hits = np.zeros(2)
    for g in range(eptr.size - 1):
        lo, hi = eptr[g], eptr[g + 1]
        order = np.lexsort((ids[lo:hi], -s[lo:hi]))
        hits += ye[lo:hi][order[:20]].sum(), ye[lo:hi][order[:100]].sum()
    n = args.denominator or int(e["n_clicks"])
    print(f"train {args.train} ({y.size:,} rows, {X.shape[1]} columns) eval {args.eval}: recall@20 {hits[0] / n:.4f} "
          f"recall@100 {hits[1] / n:.4f} (pool {ye.sum() / n:.4f}, {n:,} clicks), {time.perf_counter() - t0:.0f} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--train-log", required=True)
    c.add_argument("--val-log")
    c.add_argument("--segment", required=True, help="eval | w1 | w2 | ...")
    c.add_argument("--depth", type=int, default=50)
    c.add_argument("--out", required=True, type=Path)
    f = sub.add_parser("fit")
    f.add_argument("--cache", required=True, type=Path)
    f.add_argument("--train", nargs="+", default=["w1"])
    f.add_argument("--eval", default="eval")
    f.add_argument("--denominator", type=int, default=0)
    f.add_argument("--drop", nargs="*", default=[])
    f.add_argument("--site-names", action="store_true")
    f.add_argument("--pool-max", action="store_true")
    f.add_argument("--log-loss", action="store_true")
    f.add_argument("--trees", type=int, default=100)
    f.add_argument("--leaves", type=int, default=31)
    args = ap.parse_args(argv)
    if args.cmd == "cache":
        if args.segment == "eval" and not args.val_log:
            ap.error("--segment eval needs --val-log")
        if args.segment != "eval" and not re.fullmatch(r"w[1-9][0-9]*", args.segment):
            ap.error("--segment: eval or w<k>, k >= 1")
        cache(args)
    else:
        fit(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
