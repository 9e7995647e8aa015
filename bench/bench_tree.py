"""Benchmark: label-tree build time on real AOL labels.

Usage::

    /work/venv/bin/python -m bench.bench_tree [--data DIR] [--repeats 3] [--kinds hybrid,kmeans]

Labels: the next queries of the session pairs of the top-1000-users log (~81k, what
``qac.build`` indexes), all distinct normalised queries of that log (~151k) and of the 1M-query
sample (~366k). Embeddings: ``qac.features.CharTfidf`` (position-weighted char 1-3-gram TF-IDF)
when available, else sklearn's char TF-IDF. Reports the median of ``--repeats`` builds (after one
warm-up build that also triggers the numba compile/cache load), tree stats, and checks that every
repeat built the identical tree.
"""
from __future__ import annotations

import argparse
import gzip
import os
import re
import statistics
import time
from pathlib import Path

import numpy as np

from bench.common import machine_info

from qac.xmr.tree import LabelTree, TreeConfig, build_label_tree

_NON_WORD = re.compile(r"\W+")


def _normalize(raw: str) -> str:
    try:
        from qac.text import normalize_query
    except ImportError:
        return " ".join(_NON_WORD.sub(" ", raw.lower()).split())
    return normalize_query(raw)


def read_queries(path: Path, column: str = "Query") -> list[str]:
    """Distinct non-empty normalised queries of a gzip TSV/text file with a header row."""
    out = set()
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        col = header.index(column)
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) > col:
                q = _normalize(parts[col])
                if q:
                    out.add(q)
    return sorted(out)


def session_labels(path: Path) -> list[str]:
    """The labels ``qac.build`` uses: distinct next queries of the session pairs."""
    from qac.logs import SessionConfig, make_points, read_aol_log, split_sessions
    log = read_aol_log(path)
    points = make_points(split_sessions(log.events, SessionConfig()), 0)
    return sorted({p.next_query for p in points})


def embed(labels: list[str]):
    try:
        from qac.features import CharTfidf
        model = CharTfidf(ngram_range=(1, 3), position_weighted=True)
        model.fit(labels)
        return model.transform(labels), "qac.features.CharTfidf(position_weighted)"
    except ImportError:
        from sklearn.feature_extraction.text import TfidfVectorizer
        vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), dtype=np.float32)
        return vec.fit_transform(labels), "sklearn TfidfVectorizer(char, 1-3)"


def tree_stats(tree: LabelTree) -> str:
    sizes = tree.leaf_sizes()
    pct = np.percentile(sizes, [0, 50, 90, 99, 100]).astype(int).tolist()
    n_pass = [int(tree.is_pass_through(l).sum()) for l in range(tree.depth + 1)]
    trie = f"trie levels 1..{tree.trie_depth}" if tree.trie_depth else "no trie levels"
    return (f"depth L={tree.depth} ({trie})\n"
            f"    n_nodes per level: {tree.n_nodes}\n"
            f"    pass-through nodes per level: {n_pass}\n"
            f"    leaves: {sizes.size}, leaf size min/p50/p90/p99/max = {pct}, "
            f"mean {sizes.mean():.1f}, singleton leaves {int((sizes == 1).sum())}")


def _same(a: LabelTree, b: LabelTree) -> bool:
    return (a.n_nodes == b.n_nodes and np.array_equal(a.label_perm, b.label_perm)
            and all(np.array_equal(x, y) for x, y in zip(a.child_ptr, b.child_ptr)))


def bench(name: str, labels: list[str], kinds: list[str], repeats: int) -> None:
    t0 = time.perf_counter()
    X, how = embed(labels)
    t_embed = time.perf_counter() - t0
    lens = np.fromiter(map(len, labels), dtype=np.int64)
    print(f"\n== {name}: {len(labels)} labels, avg {lens.mean():.1f} chars (max {lens.max()}), "
          f"embeddings {X.shape} nnz={X.nnz} via {how} ({t_embed:.2f} s)")
    for kind in kinds:
        config = TreeConfig(kind=kind)
        ref = build_label_tree(labels, X, config)  # warm-up (numba cache load / compile)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            tree = build_label_tree(labels, X, config)
            times.append(time.perf_counter() - t0)
            if not _same(ref, tree):
                print("    !! repeat built a different tree")
        t0 = time.perf_counter()
        tree.validate()
        t_val = time.perf_counter() - t0
        one = build_label_tree(labels, X, config, n_threads=1)
        t1 = [time.perf_counter()]
        one = build_label_tree(labels, X, config, n_threads=1)
        t1.append(time.perf_counter())
        print(f"  {config}\n    build median {statistics.median(times):.3f} s "
              f"(runs {', '.join(f'{t:.3f}' for t in times)}); 1 thread {t1[1] - t1[0]:.3f} s; "
              f"same tree with 1 thread: {_same(ref, one)}; validate {t_val:.2f} s")
        print("    " + tree_stats(tree))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("QAC_SHARED_DATA", Path(__file__).resolve().parents[2]
                                  / "shared" / "data"))
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kinds", default="hybrid,kmeans")
    args = parser.parse_args(argv)
    print(f"machine: {machine_info()}")
    kinds = args.kinds.split(",")
    aol = args.data / "aol"
    top = aol / "aol_top1000_users.before_2006-05-25.tsv.gz"
    try:
        bench("AOL top-1000 users: next-query labels of session pairs (qac.build)",
              session_labels(top), kinds, args.repeats)
    except ImportError as exc:
        print(f"(skipping session labels: {exc})")
    bench("AOL top-1000 users: all distinct queries", read_queries(top), kinds, args.repeats)
    bench("AOL 1M queries", read_queries(aol / "aol_2006_1M_queries.txt.gz"), kinds, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
