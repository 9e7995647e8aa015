"""Smoke tests of the scale and quality benchmarks on small slices of the real data, and unit tests
of their projection and PECOS cluster-chain helpers."""
from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest

from bench import quality, scale


# ---------------------------------------------------------------------------------------------
# bench.scale
# ---------------------------------------------------------------------------------------------


def fake_case(n_labels, depth, stages, rss, size, p50=100.0, p99=400.0):
    return {"build": {"counts": {"n_labels": n_labels, "tree_depth": depth}, "stages_s": dict(stages),
                      "stages_cpu_s": dict(stages), "wall_s": sum(stages.values()),
                      "cpu_s": sum(stages.values()), "peak_rss_mb": rss, "artifact_disk_mb": size},
            "latency": {"complete_us": {"p50": p50, "p99": p99}}}


def test_projection_models():
    stages = {"read": 2.0, "label tree": 3.0, "xr-linear": 10.0}
    small = fake_case(1000, 5, stages, rss=200.0, size=10.0)
    big = fake_case(4000, 7, stages, rss=500.0, size=40.0)
    same = scale.project(big, 4000, small)
    assert same["stages_s"] == pytest.approx(stages) and same["peak_rss_mb"] == pytest.approx(500.0)
    pj = scale.project(big, 16000, small)
    assert pj["tree_depth"] == pytest.approx(9.0)  # one 2-means level per doubling
    assert pj["stages_s"]["read"] == pytest.approx(8.0)  # ~ n
    assert pj["stages_s"]["label tree"] == pytest.approx(3.0 * 4 * math.log(16000) / math.log(4000))
    assert pj["stages_s"]["xr-linear"] == pytest.approx(10.0 * 4 * 9 / 7)  # ~ nnz x depth
    assert pj["peak_rss_mb"] == pytest.approx(500.0 + 0.1 * 12000)  # line through both cases
    assert pj["artifact_mb"] == pytest.approx(160.0)
    assert pj["complete_p99_us"] == pytest.approx(400.0 * 9 / 7)
    assert pj["total_s"] == pytest.approx(sum(pj["stages_s"].values()))
    g = scale.growth(small, big)
    assert g["n_labels"] == 4.0 and g["peak_rss_mb"] == 2.5 and g["complete_p50_us"] == 1.0


def test_scale_smoke_on_real_slices(tmp_path, shared_data):
    """Both cases built in child processes from the first rows of the real inputs."""
    out = tmp_path / "scale.json"
    rc = scale.main(["--aol-log", str(shared_data / "aol" / "aol_top1000_users.before_2006-05-25.tsv.gz"),
                     "--queries", str(shared_data / "aol" / "aol_2006_1M_queries.txt.gz"),
                     "--max-rows", "1500", "--n", "40", "--repeats", "2", "--work", str(tmp_path / "w"),
                     "--project", "1000000", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["cases"]) == {"aol", "aol1m"} and res["machine"]["cpu_count"] >= 1
    for name, case in res["cases"].items():
        b = case["build"]
        assert b["counts"]["n_labels"] > 100 and b["counts"]["nnz_features"] > b["counts"]["n_points"]
        assert b["peak_rss_mb"] > 50 and b["artifact_disk_mb"] > 0.01
        assert b["wall_s"] >= b["stages_s"]["xr-linear"] > 0 and b["cpu_s"] > 0
        assert set(b["stages_cpu_s"]) == set(b["stages_s"])
        lat = case["latency"]
        assert lat["n_requests"] == 40 and lat["answers_consistent"] and lat["mean_answers"] > 1
        assert 0 < lat["complete_us"]["p50"] <= lat["complete_us"]["p99"]
        assert lat["baseline_mpc_us"]["n"] == lat["complete_cpu_us"]["n"] == 80
        assert lat["complete_cpu_us"]["p99"] <= lat["complete_us"]["p99"] + 1.0  # CPU time within wall time
    n_small = res["cases"]["aol"]["build"]["counts"]["n_labels"]
    n_large = res["cases"]["aol1m"]["build"]["counts"]["n_labels"]
    assert res["growth"]["n_labels"] == pytest.approx(max(n_small, n_large) / min(n_small, n_large))
    pj = res["projection"]
    assert pj["n_labels"] == 1_000_000 and pj["total_s"] > 0 and pj["peak_rss_mb"] > 0
    assert pj["models"]["xr-linear"] == "nnz(X) x depth"
    # --reuse re-times latency on the same artifacts and carries the build figures over.
    assert scale.main(["--aol-log", str(shared_data / "aol" / "aol_top1000_users.before_2006-05-25.tsv.gz"),
                       "--queries", str(shared_data / "aol" / "aol_2006_1M_queries.txt.gz"),
                       "--max-rows", "1500", "--n", "20", "--repeats", "2", "--work", str(tmp_path / "w"),
                       "--reuse", "--json", str(out)]) == 0
    again = json.loads(out.read_text())
    assert "build_figures_from" in again
    for name, case in again["cases"].items():
        assert case["build"] == res["cases"][name]["build"] and case["latency"]["n_requests"] == 20
    md = scale.markdown(res)
    assert md.count("\n") >= 15 and f"| {n_large:,} |" in md.replace(f"| {n_small:,} | {n_large:,} |", f"| {n_large:,} |")


def test_prefix_requests_are_prefixes_of_rows():
    rows = ["Cheap Flights", "new york", "...", "weather"]
    reqs = scale.prefix_requests(rows, 50, seed=3)
    assert len(reqs) == 50
    full = {"cheap flights", "new york", "weather"}
    assert all(prev == [] and any(q.startswith(p) for q in full) and p for prev, p in reqs)


# ---------------------------------------------------------------------------------------------
# bench.quality
# ---------------------------------------------------------------------------------------------


def _slice(src, dst, n_rows):
    with gzip.open(src, "rt", encoding="utf-8") as f, gzip.open(dst, "wt", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i > n_rows:
                break
            g.write(line)
    return dst


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory, shared_data):
    """Train on the first 4,000 rows of the shared log, test on the next users' rows."""
    d = tmp_path_factory.mktemp("quality")
    log = shared_data / "aol" / "aol_top1000_users.before_2006-05-25.tsv.gz"
    with gzip.open(log, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(6001)]
    for name, part in (("train", lines[1:4001]), ("test", lines[4001:])):
        with gzip.open(d / f"{name}.tsv.gz", "wt", encoding="utf-8") as g:
            g.write(lines[0])
            g.writelines(part)
    return d


def test_quality_smoke_builds_and_tabulates(tiny_split, tmp_path):
    md, js = tmp_path / "q.md", tmp_path / "q.json"
    rc = quality.main(["--artifacts", str(tmp_path / "art"), "--train", str(tiny_split / "train.tsv.gz"),
                       "--test", str(tiny_split / "test.tsv.gz"), "--no-search", "--max-points", "150",
                       "--md", str(md), "--json", str(js)])
    assert rc == 0
    res = json.loads(js.read_text())
    rows = {r["method"]: r for r in res["completion"]["rows"]}
    assert len(rows) == 5 and "this service (default)" in rows
    # The XR-Linear rows are the model alone, not the ranked union: they differ from the service.
    assert any(name.startswith("XR-Linear") for name in rows)
    mpc = rows["MPC over all training queries (baseline)"]
    for r in rows.values():
        assert r["n_points"] == 150 and 0.0 <= r["mrr@10"] <= r["success@10"] <= 1.0
        assert sum(r[f"n {b}"] for b in quality.BUCKETS) == 150
    assert rows["this service (default)"]["mrr@10"] >= mpc["mrr@10"]
    text = md.read_text()
    assert text.count("\n|") >= 5 and f"{rows['this service (default)']['mrr@10']:.4f}" in text
    try:
        import pecos  # noqa: F401
    except ImportError:
        assert res["completion"]["skipped"][0]["reason"].startswith("libpecos not importable")


def test_cluster_chain_matches_the_tree(tiny_split, tmp_path):
    from qac.build import build_completion
    from qac.completer import Completer

    build_completion(tiny_split / "train.tsv.gz", tmp_path / "art", progress=False)
    model = Completer.load(tmp_path / "art").model
    chain = quality.cluster_chain(model)
    assert len(chain) == model.depth and chain[0].shape == (model.n_nodes[1], 1)
    for lev, c in enumerate(chain):
        assert c.shape == (model.n_nodes[lev + 1], model.n_nodes[lev])
        np.testing.assert_array_equal(np.asarray(c.sum(axis=1)).ravel(), 1.0)  # one parent each
    # Label ids -> root through the chain equals the tree's own label-to-leaf map.
    leaf_of_label = chain[-1].tocsr().indices
    pos = np.empty(model.n_labels, dtype=np.int64)
    pos[model.label_perm] = np.arange(model.n_labels)
    cp = model.level_child_ptr(model.depth - 1)
    np.testing.assert_array_equal(leaf_of_label, np.searchsorted(cp, pos, side="right") - 1)


def test_quality_never_rebuilds_a_given_search_artifact(tiny_split, tmp_path):
    """``--build`` rebuilds ``--artifacts`` only; an existing ``--search-artifacts`` is read, never written."""
    from qac.build import build_completion

    given = tmp_path / "given"
    build_completion(tiny_split / "train.tsv.gz", given, progress=False)
    before = {f.name: f.stat().st_mtime_ns for f in given.iterdir()}
    rc = quality.main(["--artifacts", str(tmp_path / "art"), "--search-artifacts", str(given), "--build",
                       "--train", str(tiny_split / "train.tsv.gz"), "--test", str(tiny_split / "test.tsv.gz"),
                       "--max-points", "20"])
    assert rc == 0
    assert {f.name: f.stat().st_mtime_ns for f in given.iterdir()} == before
    assert (tmp_path / "art" / "manifest.json").is_file()


@pytest.mark.parametrize("key,name", [("bankofamerica.com", "bankofamerica"), ("en.wikipedia.org", "wikipedia"),
                                      ("bbc.co.uk", "bbc"), ("my-site.net/a/b", "mysite"), ("localhost", "localhost"),
                                      ("", "")])
def test_stack_pools_site_name(key, name):
    from bench.stack_pools import site_name

    assert site_name(key) == name


def test_stack_pools_columns_equal_slow_twins():
    from bench.stack_pools import _pool_max_columns, _site_name_columns

    X = np.array([[1.0, 5.0], [3.0, 2.0], [7.0, 7.0], [0.5, 9.0]], dtype=np.float32)
    ptr = np.array([0, 2, 2, 4])  # an empty pool in the middle
    got = _pool_max_columns(X, ptr, [0, 1])
    want = [[1 - 3, 5 - 5], [3 - 3, 2 - 5], [7 - 7, 7 - 9], [0.5 - 7, 9 - 9]]
    np.testing.assert_allclose(got, want)
    names = ["bankofamerica", "america", "ba", "boa"]
    cols = _site_name_columns(["bank of america", "x"], np.array([0, 1, 2, 3, 0]), np.array([0, 4, 5]), names)
    np.testing.assert_allclose(cols[0], [1, 1, 1, 1, 0])              # the query's own site
    np.testing.assert_allclose(cols[1], [0, 0, 1, 0, 0])              # "america" inside the query
    np.testing.assert_allclose(cols[2], [0, 0, 0, 2 / 13, 0])         # too short to count as inside
    np.testing.assert_allclose(cols[3], [0, 0, 0, 1 / 13, 1])         # the query's initials
    np.testing.assert_allclose(cols[4], [0, 0, 0, 0, 0])
