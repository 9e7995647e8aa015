"""Dev splits of graded judgments: whole search terms go to train or to test (as ``split_by_query``)."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from qac.text import normalize_query

HEADER = "search_term\tproduct_uid\trelevance"


def write_judgments_split(src, dst_train, dst_test, test_fraction: float = 0.2, seed: int = 0) -> tuple[int, int]:
    """Copy the raw rows of a judgments TSV (gzip or plain) into train and test files.

    Search terms are grouped by their normalised form; the sorted distinct terms are permuted by
    ``numpy.random.default_rng(seed)`` and the first ``round(test_fraction * n)`` go to test -- the
    same rule as :func:`retrieval.catalog.split_by_query`, so a build on the train file and an
    evaluation on the test file see disjoint search terms. Outputs are gzip when the name ends in
    ``.gz`` and are written atomically (temporary file + rename).

    Returns
    -------
    (n_train_rows, n_test_rows)

    Raises
    ------
    ValueError
        Wrong header or ``test_fraction`` outside (0, 1).
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    with open(src, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(src, "rt", encoding="utf-8", newline="") as f:
        lines = f.read().splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise ValueError(f"{src}: expected header {HEADER!r}")
    rows = lines[1:]
    terms = [normalize_query(r.split("\t", 1)[0]) for r in rows]
    distinct = sorted(set(terms))
    perm = np.random.default_rng(int(seed)).permutation(len(distinct))
    test_terms = {distinct[i] for i in perm[: int(round(float(test_fraction) * len(distinct)))].tolist()}
    train = [r for r, t in zip(rows, terms) if t not in test_terms]
    test = [r for r, t in zip(rows, terms) if t in test_terms]
    for dst, part in ((dst_train, train), (dst_test, test)):
        dst = Path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        data = ("\n".join([HEADER, *part]) + "\n").encode("utf-8")
        with open(tmp, "wb") as f:
            f.write(gzip.compress(data, mtime=0) if dst.name.endswith(".gz") else data)
        os.replace(tmp, dst)
    return len(train), len(test)
