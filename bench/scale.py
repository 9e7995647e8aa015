"""Scale benchmark: build time, peak memory, artifact size and latency from ~81k to ~366k labels.

Usage::

    python -m bench.scale [--aol-log PATH] [--queries PATH] [--work DIR] [--json OUT]
                          [--cases aol,aol1m] [--n 5000] [--repeats 2] [--max-rows N]

Cases (each built in its own child process, so ``ru_maxrss`` is that build's own peak):

- ``aol``: the session-aware completion index of ``qac.build.build_completion`` over the whole shared
  AOL log (``aol_top1000_users.before_2006-05-25.tsv.gz``, ~81k labels).
- ``aol1m``: the prefix-only index of ``qac.build.build_prefix_index`` over every row of the 1M-row
  AOL query sample (``aol_2006_1M_queries.txt.gz``, ~362k distinct normalised queries = labels).

For each case: wall and CPU seconds per build stage, peak RSS of the build process (MB), artifact
size on disk (MB), then, in this process, single ``Completer.complete`` latency (k=10, raw strings
to final list, after warm-up, one call at a time) over real requests, next to a baseline measured
in the same run (MPC alone: normalise + top-k with back-off on the same artifact). Requests: for
``aol``, (previous query, prefix) pairs of the log's own sessions with a fresh prefix seed (1); for
``aol1m``, rows of the query file drawn uniformly (so frequent queries come up as often as users
typed them) with a uniform prefix length, no previous query. Answers are computed ``--repeats``
times and must agree.

Growth and projection: the ratio of every figure between the two cases, and a projection to
``--project`` labels (default 10M) from the larger case under stated models (see
:func:`project`). ``--max-rows`` caps the rows read from each input (smoke tests).
"""
from __future__ import annotations

import argparse
import gc
import gzip
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import format_row, machine_info, percentiles_us, write_json

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "aol"
DEFAULT_LOG = DATA / "aol_top1000_users.before_2006-05-25.tsv.gz"
DEFAULT_QUERIES = DATA / "aol_2006_1M_queries.txt.gz"
CASES = ("aol", "aol1m")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def read_query_rows(path: Path, max_rows: int | None = None) -> list[str]:
    """Raw query strings, one per row, of a gzip text file with the header ``Query``.

    Raises
    ------
    ValueError
        If the first line is not ``Query``.
    """
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        header = fh.readline().rstrip("\n")
        if header != "Query":
            raise ValueError(f"{path}: expected header 'Query', got {header!r}")
        rows = []
        for line in fh:
            if max_rows is not None and len(rows) >= max_rows:
                break
            rows.append(line.rstrip("\n"))
    return rows


def slice_log(path: Path, out: Path, max_rows: int) -> Path:
    """The header and first ``max_rows`` rows of an AOL-format log, gzip, at ``out``."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as src, \
            gzip.open(out, "wt", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i > max_rows:
                break
            dst.write(line)
    return out


def session_requests(log: Path, n: int, seed: int = 1) -> list[tuple[list[str], str]]:
    """``n`` (previous queries, prefix) requests: session pairs of ``log`` in random order, each with
    a uniform prefix drawn with ``seed`` (the build draws its training prefixes with seed 0)."""
    from qac.logs import SessionConfig, make_points, read_aol_log, split_sessions

    points = make_points(split_sessions(read_aol_log(log).events, SessionConfig()), seed)
    pick = np.random.default_rng(seed).permutation(len(points))[:n]
    return [([points[i].prev_query] if points[i].prev_query else [], points[i].prefix) for i in pick]


def prefix_requests(rows: list[str], n: int, seed: int = 0) -> list[tuple[list[str], str]]:
    """``n`` (no previous query, prefix) requests: uniform rows, uniform prefix length 1..len."""
    from qac.text import normalize_query

    rng = np.random.default_rng(seed)
    out: list[tuple[list[str], str]] = []
    while len(out) < n:
        q = normalize_query(rows[int(rng.integers(len(rows)))])
        if q:
            out.append(([], q[: int(rng.integers(1, len(q) + 1))]))
    return out


# ---------------------------------------------------------------------------------------------
# One build in a child process
# ---------------------------------------------------------------------------------------------


def child_build(case: str, source: Path, out_dir: Path, max_rows: int | None) -> dict:
    """Run one case's build in this process; return its report with this process's peak RSS."""
    from qac.build import build_completion, build_prefix_index

    t0 = time.perf_counter()
    if case == "aol":
        report = build_completion(source, out_dir, progress=True)
    else:
        report = build_prefix_index(read_query_rows(source, max_rows), out_dir, progress=True,
                                    source=str(source))
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": ru.ru_maxrss / 1024,
            "stages_s": report.seconds, "stages_cpu_s": report.cpu_seconds, "counts": report.counts,
            "artifact_mb": report.artifact_bytes / 1e6}


def run_build(case: str, source: Path, out_dir: Path, max_rows: int | None) -> dict:
    """Build one case in a fresh ``python -m bench.scale --child`` process; its result dict."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = Path(f.name)
    cmd = [sys.executable, "-m", "bench.scale", "--child", case, "--child-source", str(source),
           "--child-out", str(out_dir), "--child-result", str(result_path)]
    if max_rows is not None:
        cmd += ["--max-rows", str(max_rows)]
    load_before = os.getloadavg()
    try:
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
        res = json.loads(result_path.read_text())
    finally:
        result_path.unlink(missing_ok=True)
    res["loadavg_before"], res["loadavg_after"] = list(load_before), list(os.getloadavg())
    res["artifact_disk_mb"] = dir_bytes(out_dir) / 1e6
    return res


def dir_bytes(path: Path) -> int:
    """Bytes of the regular files directly under ``path`` (an artifact directory is flat)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


# ---------------------------------------------------------------------------------------------
# Latency
# ---------------------------------------------------------------------------------------------


def time_calls(fn, requests, repeats: int) -> tuple[list[int], list[int], list]:
    """Wall and thread-CPU nanoseconds of every call, and the answers, ``repeats`` passes over
    ``requests``. Thread CPU time leaves out the time the thread waited for a core, so it measures
    the work per call even on a machine loaded by other processes; wall time is what a caller sees."""
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    lat, lat_cpu, answers = [], [], []
    for _ in range(repeats):
        for prev, prefix in requests:
            t0, c0 = wall(), cpu()
            ans = fn(prev, prefix)
            c1, t1 = cpu(), wall()
            lat.append(t1 - t0)
            lat_cpu.append(c1 - c0)
            answers.append(ans)
    return lat, lat_cpu, answers


def measure_latency(art: Path, requests: list[tuple[list[str], str]], repeats: int) -> dict:
    """Wall and thread-CPU p50/p90/p99 (us) of ``Completer.complete`` and of the MPC-only
    baseline on ``art``."""
    from qac.completer import Completer
    from qac.text import normalize_prefix

    comp = Completer.load(art)
    comp.warmup()

    def complete(prev, prefix):
        return [c.text for c in comp.complete(prev, prefix, 10)]

    def mpc_only(prev, prefix):
        return [q for q, _, _ in comp.mpc.top_k_backoff(normalize_prefix(prefix), 10)]

    complete(*requests[0])  # first real call outside the timing (lazy decoding of stored rows)
    gc.collect()
    lat, lat_cpu, answers = time_calls(complete, requests, repeats)
    base, base_cpu, _ = time_calls(mpc_only, requests, repeats)
    n = len(requests)
    return {"n_requests": n, "repeats": repeats, "complete_us": percentiles_us(lat),
            "baseline_mpc_us": percentiles_us(base), "complete_cpu_us": percentiles_us(lat_cpu),
            "baseline_mpc_cpu_us": percentiles_us(base_cpu),
            "answers_consistent": all(answers[i] == answers[i % n] for i in range(len(answers))),
            "mean_answers": float(np.mean([len(a) for a in answers[:n]])),
            "loadavg": list(os.getloadavg())}


# ---------------------------------------------------------------------------------------------
# Growth and projection
# ---------------------------------------------------------------------------------------------

# Stage -> cost model used for the projection (n = labels; the build makes one training point per
# label in the prefix-only case, so points, rows of X and labels grow together).
STAGE_MODELS = {
    "label tree": "n log n",
    "xr-linear": "nnz(X) x depth",
}


def _depth_at(n_target: float, n_ref: float, depth_ref: float) -> float:
    """Tree depth at ``n_target`` labels: balanced 2-means below a fixed trie adds one level per
    doubling of the labels under each trie node."""
    return depth_ref + max(0.0, math.log2(n_target / n_ref))


def project(case: dict, n_target: int, small: dict | None = None) -> dict:
    """Project build seconds, peak RSS, artifact size and latency of ``case`` to ``n_target`` labels.

    Models (assumptions: same data distribution, one training point per label, the same average
    features per point, the same trie depth and leaf size, the same 2-core machine):

    - ``label tree``: ``t ~ n log n`` (2-means splits touch every label once per level, and the
      number of levels grows with log n);
    - ``xr-linear``: ``t ~ nnz(X) x depth`` (every level's classifiers see every instance once per
      coordinate-descent pass; nnz(X) ~ n; depth grows by one per doubling of n);
    - every other stage (reading, normalising, features, MPC and suffix tries, save): ``t ~ n``;
    - peak RSS and artifact size: ``a + b n`` (a fixed interpreter/library part plus labels x
      average stored weights per label), the line through ``small`` and ``case`` when ``small`` is
      given and cost less, else ``b n`` through the origin (an upper bound);
    - latency: ``~ depth`` (beam x fanout x depth work per query, never proportional to n).

    Wall and CPU seconds are projected alike (CPU seconds do not depend on the machine's load).

    Returns
    -------
    dict with ``n_labels``, ``scale`` (n_target / n), ``tree_depth``, ``stages_s``,
    ``stages_cpu_s``, ``total_s``, ``total_cpu_s``, ``peak_rss_mb``, ``artifact_mb``,
    ``complete_p50_us``, ``complete_p99_us`` (wall), ``complete_cpu_p50_us``,
    ``complete_cpu_p99_us`` (thread CPU) and ``models``.
    """
    b = case["build"]
    n = float(b["counts"]["n_labels"])
    r = n_target / n
    depth = float(b["counts"]["tree_depth"])
    depth_t = _depth_at(n_target, n, depth)
    factor = {"n": r, "n log n": r * math.log(n_target) / math.log(n), "nnz(X) x depth": r * depth_t / depth}
    models = {k: STAGE_MODELS.get(k, "n") for k in b["stages_s"] if k != "total"}
    stages = {k: b["stages_s"][k] * factor[m] for k, m in models.items()}
    stages_cpu = {k: b["stages_cpu_s"].get(k, float("nan")) * factor[m] for k, m in models.items()}

    fits: dict[str, str] = {}

    def linear(key: str) -> float:
        if small is not None and "build" in small:
            n0, y0 = float(small["build"]["counts"]["n_labels"]), small["build"][key]
            slope = (b[key] - y0) / (n - n0) if n != n0 else b[key] / n
            if slope > 0:
                fits[key] = "a + b n"
                return b[key] + slope * (n_target - n)
        # No second case, or the smaller case cost more (the session index also builds user
        # histories and the completion ranker, which the prefix-only index does not): b n.
        fits[key] = "b n"
        return b[key] * r

    lat = case.get("latency", {}).get("complete_us", {})
    lat_cpu = case.get("latency", {}).get("complete_cpu_us", {})
    return {"n_labels": n_target, "scale": r, "tree_depth": depth_t, "stages_s": stages,
            "stages_cpu_s": stages_cpu, "total_s": sum(stages.values()),
            "total_cpu_s": sum(stages_cpu.values()), "peak_rss_mb": linear("peak_rss_mb"),
            "artifact_mb": linear("artifact_disk_mb"),
            "complete_p50_us": lat.get("p50", float("nan")) * depth_t / depth,
            "complete_p99_us": lat.get("p99", float("nan")) * depth_t / depth,
            "complete_cpu_p50_us": lat_cpu.get("p50", float("nan")) * depth_t / depth,
            "complete_cpu_p99_us": lat_cpu.get("p99", float("nan")) * depth_t / depth,
            "models": {**models, "peak_rss_mb": fits["peak_rss_mb"], "artifact_mb": fits["artifact_disk_mb"],
                       "latency": "depth"}}


def growth(small: dict, large: dict) -> dict:
    """Ratios large / small of labels, build seconds (wall and CPU), peak RSS, size and latency."""
    def ratio(a, b):
        return b / a if a else float("nan")

    out = {"n_labels": ratio(small["build"]["counts"]["n_labels"], large["build"]["counts"]["n_labels"]),
           "build_wall_s": ratio(small["build"]["wall_s"], large["build"]["wall_s"]),
           "build_cpu_s": ratio(small["build"]["cpu_s"], large["build"]["cpu_s"]),
           "peak_rss_mb": ratio(small["build"]["peak_rss_mb"], large["build"]["peak_rss_mb"]),
           "artifact_mb": ratio(small["build"]["artifact_disk_mb"], large["build"]["artifact_disk_mb"])}
    if "latency" in small and "latency" in large:
        for p in ("p50", "p99"):
            out[f"complete_{p}_us"] = ratio(small["latency"]["complete_us"][p],
                                            large["latency"]["complete_us"][p])
    big_stages = large["build"]["stages_cpu_s"]
    out["stages_cpu_s"] = {k: ratio(v, big_stages[k]) for k, v in small["build"]["stages_cpu_s"].items()
                           if k in big_stages}
    return out


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def summarise(result: dict, n_target: int) -> dict:
    """Add ``growth`` (two built cases) and ``projection`` (to ``n_target`` labels) to ``result``."""
    by_size = sorted((v for v in result["cases"].values() if "build" in v),
                     key=lambda e: e["build"]["counts"]["n_labels"])
    if len(by_size) == 2:
        result["growth"] = growth(*by_size)
    if by_size:
        result["projection"] = project(by_size[-1], n_target, by_size[0] if len(by_size) > 1 else None)
    return result


def markdown(result: dict) -> str:
    """README table of a :func:`main` result: one column per built case, growth and projection."""
    cases = [(k, v) for k, v in result["cases"].items() if "build" in v]
    if not cases:
        return ""
    pj, g = result.get("projection"), result.get("growth")
    head = [""] + [f"`{k}`" for k, _ in cases] + (["growth"] if g else []) + \
        ([f"projection to {pj['n_labels']:,} labels"] if pj else [])
    rows = []

    def row(name, vals, grow="", proj=""):
        rows.append([name] + vals + ([grow] if g else []) + ([proj] if pj else []))

    def b(k):
        return [v["build"] for _, v in cases] if k is None else [v["build"][k] for _, v in cases]

    row("labels", [f"{x['counts']['n_labels']:,}" for x in b(None)], g and f"x{g['n_labels']:.2f}",
        pj and f"{pj['n_labels']:,}")
    row("training points / nnz(X)", [f"{x['counts']['n_points']:,} / {x['counts']['nnz_features']:,}"
                                     for x in b(None)])
    row("tree depth", [str(x["counts"]["tree_depth"]) for x in b(None)], "", pj and f"{pj['tree_depth']:.1f}")
    row("build, wall (load avg 1 min before/after)",
        [f"{x['wall_s']:.1f} s ({x['loadavg_before'][0]:.1f}/{x['loadavg_after'][0]:.1f})" for x in b(None)],
        g and f"x{g['build_wall_s']:.2f}", pj and f"{pj['total_s']:,.0f} s")
    row("build, CPU (user + system)", [f"{x['cpu_s']:.1f} s" for x in b(None)], g and f"x{g['build_cpu_s']:.2f}",
        pj and f"{pj['total_cpu_s']:,.0f} s")
    stages = list(dict.fromkeys(k for x in b(None) for k in x["stages_cpu_s"] if k != "total"))
    for stage in stages:
        ratio = g["stages_cpu_s"].get(stage) if g else None
        row(f"{stage}: wall / CPU", [f"{x['stages_s'][stage]:.1f} / {x['stages_cpu_s'][stage]:.1f} s"
                                     if stage in x["stages_s"] else "-" for x in b(None)],
            ratio is not None and f"x{ratio:.2f} (CPU)",
            pj and stage in pj["stages_cpu_s"] and
            f"{pj['stages_cpu_s'][stage]:,.0f} s CPU ({pj['models'][stage]})")
    row("peak RSS of the build", [f"{x:,.0f} MB" for x in b("peak_rss_mb")], g and f"x{g['peak_rss_mb']:.2f}",
        pj and f"{pj['peak_rss_mb'] / 1024:.1f} GB")
    row("artifact on disk", [f"{x:.1f} MB" for x in b("artifact_disk_mb")], g and f"x{g['artifact_mb']:.2f}",
        pj and f"{pj['artifact_mb'] / 1024:.2f} GB")
    lats = [v.get("latency") for _, v in cases]
    if all(lats):
        for key, name in (("complete_us", "`complete` wall p50 / p99"), ("complete_cpu_us", "`complete` thread CPU p50 / p99"),
                          ("baseline_mpc_us", "baseline MPC only, wall p50 / p99"),
                          ("baseline_mpc_cpu_us", "baseline MPC only, thread CPU p50 / p99")):
            if not all(key in lat for lat in lats):
                continue
            proj = ""
            if pj and key in ("complete_us", "complete_cpu_us"):
                tag = "complete_cpu" if key == "complete_cpu_us" else "complete"
                proj = f"{pj[tag + '_p50_us'] / 1e3:.3f} / {pj[tag + '_p99_us'] / 1e3:.3f} ms (depth)"
            row(name, [f"{lat[key]['p50'] / 1e3:.3f} / {lat[key]['p99'] / 1e3:.3f} ms" for lat in lats], "", proj)
        row("latency load avg (1 min)", [f"{lat['loadavg'][0]:.1f}" for lat in lats])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += ["| " + " | ".join(str(c) if c else "" for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _print_case(name: str, case: dict) -> None:
    print(f"\n== {name}")
    b = case.get("build")
    if b is not None:
        c = b["counts"]
        print(f"  {c['n_labels']:,} labels, {c['n_points']:,} training points, "
              f"nnz(X) {c.get('nnz_features', 0):,}, tree depth {c['tree_depth']}")
        print(f"  build: {b['wall_s']:.1f} s wall, {b['cpu_s']:.1f} s CPU, peak RSS {b['peak_rss_mb']:.0f} MB, "
              f"artifact {b['artifact_disk_mb']:.1f} MB on disk (load avg before/after "
              f"{b['loadavg_before'][0]:.2f}/{b['loadavg_after'][0]:.2f})")
        for k, v in b["stages_s"].items():
            print(f"    {k:<14} {v:8.2f} s wall  {b['stages_cpu_s'].get(k, float('nan')):8.2f} s CPU")
    if "latency" in case:
        lat = case["latency"]
        print(f"  latency, k=10, {lat['n_requests']} real requests x {lat['repeats']} "
              f"(load avg {lat['loadavg'][0]:.2f}); answers identical across repeats: {lat['answers_consistent']}")
        print(format_row("Completer.complete (wall)", lat["complete_us"]))
        print(format_row("baseline: MPC only (wall)", lat["baseline_mpc_us"]))
        print(format_row("Completer.complete (thread CPU)", lat["complete_cpu_us"]))
        print(format_row("baseline: MPC only (thread CPU)", lat["baseline_mpc_cpu_us"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aol-log", type=Path, default=DEFAULT_LOG)
    ap.add_argument("--queries", type=Path, default=DEFAULT_QUERIES)
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    ap.add_argument("--work", type=Path, help="keep the artifacts here (default: a temporary directory)")
    ap.add_argument("--reuse", action="store_true", help="skip building a case whose artifact exists in --work; "
                    "its build figures are carried over from the existing --json file, if any (re-time latency only)")
    ap.add_argument("--n", type=int, default=5000, help="distinct latency requests per case")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--max-rows", type=int, help="read at most this many rows of each input (smoke tests)")
    ap.add_argument("--project", type=int, default=10_000_000, help="labels to project to")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path, help="write the Markdown table here")
    ap.add_argument("--from-json", type=Path, help="only print/write the Markdown table of an earlier --json")
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    ap.add_argument("--child-source", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        res = child_build(args.child, args.child_source, args.child_out, args.max_rows)
        args.child_result.write_text(json.dumps(res))
        return 0

    if args.from_json:
        md = markdown(summarise(json.loads(args.from_json.read_text()), args.project))
        print(md)
        if args.md:
            args.md.write_text(md + "\n")
        return 0
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        ap.error(f"--cases: unknown {sorted(unknown)}")
    tmp = None
    work = args.work
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-scale-")
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine_info(), "argv": sys.argv[1:], "cases": {}}
    previous = {}
    if args.reuse and args.json is not None and args.json.is_file():
        old = json.loads(args.json.read_text())
        previous = {k: v["build"] for k, v in old.get("cases", {}).items() if "build" in v}
        result["build_figures_from"] = {"argv": old.get("argv"), "machine": old.get("machine")}
    print(f"machine: {result['machine']}")
    try:
        for case in cases:
            art = work / f"art_{case}"
            source = args.aol_log if case == "aol" else args.queries
            if case == "aol" and args.max_rows is not None:
                source = slice_log(args.aol_log, work / "aol_slice.tsv.gz", args.max_rows)
            entry: dict = {"source": str(source)}
            if not (args.reuse and (art / "manifest.json").is_file()):
                entry["build"] = run_build(case, source, art, args.max_rows)
            elif case in previous:
                entry["build"] = previous[case]
            if case == "aol":
                requests = session_requests(source, args.n, seed=1)
            else:
                requests = prefix_requests(read_query_rows(source, args.max_rows), args.n, seed=1)
            entry["latency"] = measure_latency(art, requests, args.repeats)
            result["cases"][case] = entry
            _print_case(case, entry)
        summarise(result, args.project)
        built = [c for c in cases if "build" in result["cases"][c]]
        if "growth" in result:
            g = result["growth"]
            print(f"\n== growth ({built[0]} -> {built[1]}): labels x{g['n_labels']:.2f}, build wall x{g['build_wall_s']:.2f}, "
                  f"CPU x{g['build_cpu_s']:.2f}, peak RSS x{g['peak_rss_mb']:.2f}, artifact x{g['artifact_mb']:.2f}, "
                  f"p50 x{g.get('complete_p50_us', float('nan')):.2f}, p99 x{g.get('complete_p99_us', float('nan')):.2f}")
        if "projection" in result:
            pj = result["projection"]
            print(f"\n== projection to {args.project:,} labels (x{pj['scale']:.1f}, depth {pj['tree_depth']:.1f}; "
                  f"models {pj['models']}):")
            print(f"  build {pj['total_s']:.0f} s wall, {pj['total_cpu_s']:.0f} s CPU "
                  f"({', '.join(f'{k} {v:.0f}' for k, v in pj['stages_cpu_s'].items())} s CPU), "
                  f"peak RSS {pj['peak_rss_mb'] / 1024:.1f} GB, artifact {pj['artifact_mb'] / 1024:.1f} GB, "
                  f"p50 {pj['complete_p50_us']:.0f} us, p99 {pj['complete_p99_us']:.0f} us")
        if args.json:
            write_json(args.json, result)
        md = markdown(result)
        print("\n" + md)
        if args.md:
            args.md.write_text(md + "\n")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
