"""Quality benchmark: the completion and search tables of the README on a dev split, with baselines.

Usage::

    python -m bench.quality --artifacts runs/dev/art [--search-artifacts runs/dev/full_art] \
        [--train runs/dev/train.tsv.gz] [--test runs/dev/test.tsv.gz] [--hd-test runs/dev/hd_test.tsv.gz] \
        [--build] [--catalog ../shared/data/homedepot/products.tsv.gz --hd-train runs/dev/hd_train.tsv.gz] \
        [--max-points N] [--max-events N] [--no-search] [--md OUT.md] [--json OUT.json]

Completion (``qac.evaluate.evaluate_completion`` on the test log, one seeded prefix per session pair;
MRR@10, Success@10, BLEU and MRR@10 by prefix length), one row per method on the same artifact:

- MPC over all training queries (the evaluation's own baseline);
- XR-Linear with PECOS inference (unconstrained beam, filter by prefix, MPC fill);
- + prefix-constrained beam (no suffix completions);
- the cascade of issue 2 (XR-Linear, MPC, suffix completions, back-off; no learned ranking);
- this service (the artifact's default inference: every completion arm + the learned ranker);
- PECOS ``libpecos`` XR-Linear trained on the same features and the same label tree, PECOS inference
  (only when ``pecos`` is importable: ``pip install .[pecos]``; otherwise the reason is printed).

Search (``serving.evaluate_search``; needs an artifact built with search): the AOL click replay
(recall of the candidate union at budgets 20/100 for the bandit, the best fixed arm, every arm and
the per-query oracle; MRR@10 of the ranked list) and Home Depot graded judgments (recall@100 of the
union and of each arm; nDCG@10 of the ranker and of BM25 order).

``--artifacts``/``--search-artifacts`` are reused when they hold a manifest; a missing one is built
from ``--train`` (and ``--catalog``/``--hd-train`` for Home Depot) first; ``--build`` rebuilds
``--artifacts`` (never a separate, existing ``--search-artifacts``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BUCKETS = ("1-3", "4-7", "8+")


# ---------------------------------------------------------------------------------------------
# Completion
# ---------------------------------------------------------------------------------------------


def completion_row(name: str, report: dict) -> dict:
    """One table row from an ``evaluate_completion`` report (or its ``baselines.mpc`` part)."""
    row = {"method": name, "n_points": report["n_points"], "mrr@10": report["mrr@10"],
           "success@10": report["success@10"], "bleu": report["bleu"]}
    for b in BUCKETS:
        row[f"mrr@10 {b}"] = report["by_prefix_length"][b]["mrr@10"]
        row[f"n {b}"] = report["by_prefix_length"][b]["n_points"]
    if "latency_ms" in report:
        row["p99_ms"] = report["latency_ms"]["p99"]
    return row


class PecosModel:
    """``predict_one`` of :class:`qac.xmr.model.XLinearModel` over a trained ``pecos`` XLinearModel.

    Lets :class:`qac.completer.Completer` (and so ``evaluate_completion``) run PECOS inference:
    unconstrained beam search, labels filtered by prefix afterwards, MPC fill.
    """

    def __init__(self, xlm, n_features: int):
        self.xlm, self.n_features = xlm, n_features

    def predict_one(self, x_indices, x_data, *, beam_size=10, topk=10, post_processor="l3-hinge",
                    label_range=None):
        import scipy.sparse as sp

        if label_range is not None:
            raise ValueError("PECOS inference has no prefix-constrained beam")
        x = sp.csr_matrix((np.asarray(x_data, np.float32), np.asarray(x_indices, np.int32), [0, len(x_indices)]),
                          shape=(1, self.n_features))
        pred = self.xlm.predict(x, beam_size=beam_size, only_topk=topk, post_processor=post_processor).tocsr()
        order = np.argsort(-pred.data, kind="stable")
        return pred.indices[order].astype(np.int32), pred.data[order].astype(np.float32)

    def warmup(self) -> None:
        """Nothing to compile: PECOS is a C++ library."""


def cluster_chain(model) -> list:
    """The label tree of a trained :class:`qac.xmr.model.XLinearModel` as a PECOS cluster chain.

    ``chain[l]`` is csc ``(n_nodes[l+1], n_nodes[l])`` float32 with a 1 at (child, parent); the rows
    of the last matrix are label ids (PECOS indexes labels, not label nodes).
    """
    import scipy.sparse as sp

    chain = []
    for lev in range(model.depth):
        cp = np.asarray(model.level_child_ptr(lev), dtype=np.int64)
        n_parent, n_child = cp.size - 1, int(cp[-1])
        rows = np.arange(n_child)
        if lev == model.depth - 1:
            rows = np.asarray(model.label_perm, dtype=np.int64)
        parent = np.repeat(np.arange(n_parent), np.diff(cp))
        chain.append(sp.csc_matrix((np.ones(n_child, np.float32), (rows, parent)), shape=(n_child, n_parent)))
    return chain


def pecos_completer(comp, train_log: Path):
    """A Completer whose model is PECOS XR-Linear trained on ``comp``'s features and label tree.

    Returns ``(completer, None)``, or ``(None, reason)`` when ``pecos`` cannot be imported or the
    training points do not reproduce the artifact's labels.
    """
    try:
        from pecos.xmc import ClusterChain
        from pecos.xmc.xlinear.model import XLinearModel as PecosXLinear
    except ImportError as exc:  # optional extra: pip install .[pecos]
        return None, f"libpecos not importable ({exc}); install with `pip install .[pecos]`"
    import scipy.sparse as sp

    from qac.build import label_set
    from qac.completer import Completer
    from qac.logs import SessionConfig, make_points, read_aol_log, split_sessions

    cfg = comp.config
    sessions = split_sessions(read_aol_log(train_log).events, SessionConfig(cfg.session_gap_seconds))
    points = [p for r in range(cfg.n_prefixes_per_pair) for p in make_points(sessions, cfg.seed + r)]
    labels, y = label_set(points)
    if labels != comp.labels:
        return None, f"{train_log} does not reproduce the artifact's {len(comp.labels):,} labels"
    X = comp.featurizer.transform([p.prev_query for p in points], [p.prefix for p in points]).astype(np.float32)
    Y = sp.csr_matrix((np.ones(y.size, np.float32), (np.arange(y.size), y)), shape=(y.size, len(labels)))
    xlm = PecosXLinear.train(X, Y, C=ClusterChain(cluster_chain(comp.model)), threshold=cfg.threshold,
                             Cp=cfg.C, Cn=cfg.C, bias=cfg.bias)
    inference = comp.with_inference(prefix_constrained=False, suffix_completions=False, ranked=False).inference
    return Completer(comp.featurizer, PecosModel(xlm, comp.featurizer.n_features), comp.labels, comp.mpc,
                     comp.suffix, inference, cfg, comp.version + "+pecos"), None


def completion_table(art: Path, test_log: Path, train_log: Path | None, max_points: int | None, say) -> dict:
    """Every completion row on ``art`` over ``test_log`` (see the module doc)."""
    from qac.completer import Completer
    from qac.evaluate import evaluate_completion

    comp = Completer.load(art)
    # The XR-Linear rows are the model alone (no ranked union of arms): ranked=False.
    variants = [
        ("XR-Linear, PECOS inference (unconstrained beam 10, filter, MPC fill)",
         comp.with_inference(prefix_constrained=False, suffix_completions=False, ranked=False)),
        ("+ prefix-constrained beam (no suffix completions)",
         comp.with_inference(suffix_completions=False, ranked=False)),
        ("cascade: XR-Linear, MPC, suffix completions, back-off (issue 2's service)",
         comp.with_inference(ranked=False)),
        ("this service (default)", comp),
    ]
    rows, skipped, reports = [], [], {}
    for name, c in variants:
        say(f"completion: {name}")
        rep = evaluate_completion(art, test_log, completer=c, max_points=max_points, per_arm=c is comp)
        reports[name] = rep
        if not rows:
            rows.append(completion_row("MPC over all training queries (baseline)", rep["baselines"]["mpc"]))
        rows.append(completion_row(name, rep))
    pecos, reason = (None, "no --train log given") if train_log is None else pecos_completer(comp, train_log)
    if pecos is None:
        skipped.append({"method": "PECOS libpecos XR-Linear (same features, same tree)", "reason": reason})
        say(f"skipped PECOS libpecos row: {reason}")
    else:
        rep = evaluate_completion(art, test_log, completer=pecos, max_points=max_points)
        rows.append(completion_row("PECOS libpecos XR-Linear, same features and tree", rep))
    return {"rows": rows, "skipped": skipped, "config": reports["this service (default)"]["config"]}


# ---------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------


def search_tables(art: Path, test_log: Path | None, hd_test: Path | None, max_events: int | None, say) -> dict:
    """AOL click-replay and Home Depot judgment reports of ``serving.evaluate_search``."""
    from serving.evaluate_search import evaluate_search_judgments, evaluate_search_log

    out: dict = {}
    if test_log is not None and (art / "search" / "aol").is_dir():
        say("search: AOL click replay")
        out["aol"] = evaluate_search_log(art, test_log, max_events=max_events)
    if hd_test is not None and (art / "search" / "homedepot").is_dir():
        say("search: Home Depot judgments")
        out["homedepot"] = evaluate_search_judgments(art, hd_test)
    return out


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    """The README-style Markdown tables of a :func:`main` result."""
    lines = []
    comp = result.get("completion")
    if comp:
        n = comp["rows"][0]["n_points"]
        head = [f"completion method (dev split, {n:,} points)", "MRR@10", "Success@10", "BLEU"]
        head += [f"MRR {b} chars (n={comp['rows'][0][f'n {b}']:,})" if i == 0 else f"{b} (n={comp['rows'][0][f'n {b}']:,})"
                 for i, b in enumerate(BUCKETS)]
        lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for r in comp["rows"]:
            vals = [r["mrr@10"], r["success@10"], r["bleu"]] + [r[f"mrr@10 {b}"] for b in BUCKETS]
            lines.append(f"| {r['method']} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
        for s in comp["skipped"]:
            lines.append(f"| {s['method']} | skipped: {s['reason']} |" + " |" * (len(head) - 2))
        lines.append("")
    search = result.get("search", {})
    if "aol" in search:
        a = search["aol"]
        lines += ["| AOL, recall of the candidate union | @20 | @100 |", "|---|---:|---:|",
                  f"| bandit | {a['recall@20']:.4f} | {a['recall@100']:.4f} |",
                  f"| best fixed single arm ({a['best_fixed_arm']['name']}) | "
                  f"{a['arms'][a['best_fixed_arm']['name']]['recall@20']:.4f} | "
                  f"{a['arms'][a['best_fixed_arm']['name']]['recall@100']:.4f} |"]
        for name, r in a["arms"].items():
            if name != a["best_fixed_arm"]["name"]:
                lines.append(f"| {name} | {r['recall@20']:.4f} | {r['recall@100']:.4f} |")
        lines += [f"| per-query oracle single arm | {a['oracle_single_arm']['recall@20']:.4f} | "
                  f"{a['oracle_single_arm']['recall@100']:.4f} |", "",
                  f"MRR@10 of the ranked list: {a['mrr@10']:.4f} ({a['n_events']:,} click events).", ""]
    if "homedepot" in search:
        h = search["homedepot"]
        lines += [f"| Home Depot ({h['n_queries']:,} test search terms) | recall@100 | nDCG@10 (judged items) |",
                  "|---|---:|---:|",
                  f"| bandit union / ranker | {h['recall@100']:.4f} | {h['ndcg@10']:.4f} |",
                  f"| BM25 order (baseline) | | {h['baselines']['bm25_order_ndcg@10']:.4f} |"]
        for name, r in h["arms"].items():
            lines.append(f"| arm {name} | {r['recall@100']:.4f} | |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _has_manifest(path: Path | None) -> bool:
    return path is not None and (path / "manifest.json").is_file()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, required=True, help="completion artifact (built if missing)")
    ap.add_argument("--search-artifacts", type=Path, help="artifact with search/aol and search/homedepot "
                    "(built if missing and --catalog is given); default: --artifacts")
    ap.add_argument("--train", type=Path, help="training log (for --build and the PECOS row)")
    ap.add_argument("--test", type=Path, required=True, help="completion test log (AOL format)")
    ap.add_argument("--hd-test", type=Path, help="Home Depot test judgments")
    ap.add_argument("--catalog", type=Path, help="Home Depot products (to build the search artifact)")
    ap.add_argument("--hd-train", type=Path, help="Home Depot training judgments (to build the search artifact)")
    ap.add_argument("--build", action="store_true", help="rebuild --artifacts even if it exists (a separate "
                    "--search-artifacts is only built when missing)")
    ap.add_argument("--no-search", action="store_true", help="completion table only")
    ap.add_argument("--max-points", type=int, help="completion test points (default: all)")
    ap.add_argument("--max-events", type=int, help="AOL search replay click events (default: all)")
    ap.add_argument("--md", type=Path, help="write the Markdown tables here")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    def say(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    result: dict = {"machine": machine_info(), "argv": sys.argv[1:], "build_s": {}}
    search_art = args.search_artifacts or args.artifacts
    want_search = not args.no_search
    from retrieval.build import build_all

    def build(art: Path, search: bool) -> None:
        if args.train is None:
            ap.error(f"{art} holds no artifact: give --train to build it")
        say(f"building {art} (search={search})")
        t0 = time.perf_counter()
        build_all(args.train, art, catalog=args.catalog if search else None,
                  judgments=args.hd_train if search else None, search=search, progress=True)
        result["build_s"][str(art)] = time.perf_counter() - t0

    if search_art == args.artifacts:
        if args.build or not _has_manifest(args.artifacts):
            build(args.artifacts, want_search)
    else:
        if args.build or not _has_manifest(args.artifacts):
            build(args.artifacts, False)
        if want_search and not _has_manifest(search_art):  # an existing one is input: never rebuilt
            build(search_art, True)
    result["completion"] = completion_table(args.artifacts, args.test, args.train, args.max_points, say)
    if want_search:
        result["search"] = search_tables(search_art, args.test, args.hd_test, args.max_events, say)
    md = markdown(result)
    print(f"machine: {result['machine']}\n")
    print(md)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md + "\n")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
