"""Session-splitter evaluation against human session boundaries (Gayo-Avello 2009).

Gold data: 10,235 AOL queries of 215 users, each with a human-assigned session id (D. Gayo-Avello,
"A survey on session detection methods in query logs", Information Sciences 179(12), 2009). A
*boundary* sits between two consecutive rows of one user (rows sorted by epoch seconds, then row id)
whose gold session ids differ. A splitter predicts a boundary between every such pair of rows it
cuts; precision, recall and F1 are over these boundaries. Rows are NOT deduplicated here: boundaries
are between rows, and a repeated query is still a row the annotator saw.

Splitters
---------
``inactivity(T)``
    Cut when the gap is strictly greater than ``T`` minutes (the rule of
    :func:`qac.logs.split_sessions`).
``gap+overlap(T_rel, T_unrel)``
    Cut when the gap is greater than ``T_rel`` minutes if the two queries are *related*, and greater
    than ``T_unrel`` minutes otherwise (``T_unrel = -1`` cuts every unrelated pair). Two queries are
    related when their normalised forms are equal, one is a prefix of the other (spaces ignored), or
    they share a normalised word that is not a stop word (``www``, ``com``, ``the``, ...). This is
    the usual "time plus lexical continuity" idea (Jansen, Spink, Blakely and Koshman, "Defining a
    session on Web search engines", JASIST 58(6), 2007; surveyed by Gayo-Avello 2009). Its two
    thresholds are tuned for F1 on the users of one half
    (``crc32(AnonID) % 2 == 0``) and reported on the other half, next to the inactivity rule with
    its own threshold tuned on the same half and the fixed 30-minute rule.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from typing import Iterable, Sequence

from qac.text import normalize_query

__all__ = [
    "GoldRow",
    "read_gold_sessions",
    "boundary_scores",
    "evaluate_splitters",
    "format_table",
    "INACTIVITY_MINUTES",
]

INACTIVITY_MINUTES = (5, 10, 15, 20, 30, 45, 60, 90, 120)
# Grid for the tuned splitters, minutes; -1 means "always cut" for unrelated pairs.
_RELATED_GRID = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 360, 480, 720, 1440)
_UNRELATED_GRID = (-1, 0, 1, 2, 3, 5, 10, 15, 20, 30, 45, 60)
_INACTIVITY_GRID = tuple(range(1, 241))
_STOP_WORDS = frozenset(
    "www com http https org net edu gov html htm the a an and of in on for to at by is are "
    "with from how what s".split()
)
_GAYO_AVELLO = "Gayo-Avello 2009 (PedroG1515/Segmenting-User-Sessions aol.csv)"


@dataclass(frozen=True)
class GoldRow:
    """One row of the gold file.

    Attributes
    ----------
    row_id : int
    user_id : str
    query : str
        Raw query (CSV quotes removed).
    timestamp : int
        Unix seconds (the file's epoch column; its ``dd/mm/yyyy HH:MM`` column is local time and
        is not used).
    session_id : int
        Gold session id.
    """

    row_id: int
    user_id: str
    query: str
    timestamp: int
    session_id: int


def _open_text(path: str | os.PathLike):
    with open(path, "rb") as handle:
        magic = handle.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, "r", encoding="utf-8", newline="")


def _unquote(field: str) -> str:
    if len(field) >= 2 and field[0] == '"' and field[-1] == '"':
        return field[1:-1].replace('""', '"')
    return field


def read_gold_sessions(path: str | os.PathLike) -> list[GoldRow]:
    """Read the Gayo-Avello gold session file.

    Parameters
    ----------
    path : str or PathLike
        Semicolon-separated, no header, gzip or plain: ``row id; AnonID; query; clicked URL;
        dd/mm/yyyy HH:MM; epoch seconds; gold session id``. A query may contain ``;`` (then it is
        double-quoted), so the two leading and four trailing fields are taken from the ends and the
        query is what lies between.

    Returns
    -------
    list of GoldRow
        Sorted by (user first appearance, timestamp, row id).

    Raises
    ------
    ValueError
        If a line has fewer than 7 fields or a non-integer id, epoch or session id (with its line
        number): the gold file is small and must be read exactly.
    """
    rows: list[GoldRow] = []
    with _open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split(";")
            if len(fields) < 7:
                raise ValueError(f"{path}:{line_number}: expected 7 ';'-separated fields")
            try:
                row = GoldRow(
                    row_id=int(fields[0]),
                    user_id=fields[1].strip(),
                    query=_unquote(";".join(fields[2:-4])),
                    timestamp=int(fields[-2]),
                    session_id=int(fields[-1]),
                )
            except ValueError:
                raise ValueError(
                    f"{path}:{line_number}: row id, epoch and session id must be integers"
                ) from None
            rows.append(row)
    user_rank = {user: rank for rank, user in enumerate(dict.fromkeys(r.user_id for r in rows))}
    rows.sort(key=lambda r: (user_rank[r.user_id], r.timestamp, r.row_id))
    return rows


@dataclass(frozen=True)
class _Pair:
    """Two consecutive rows of one user: the candidate boundary between them."""

    user_id: str
    gap_minutes: float
    related: bool
    is_boundary: bool


def _words(query: str) -> set[str]:
    return set(query.split()) - _STOP_WORDS


def _related(a: str, b: str) -> bool:
    if a == b:
        return True
    a_flat, b_flat = a.replace(" ", ""), b.replace(" ", "")
    if a_flat and b_flat and (a_flat.startswith(b_flat) or b_flat.startswith(a_flat)):
        return True
    return not _words(a).isdisjoint(_words(b))


def _pairs(rows: Sequence[GoldRow]) -> list[_Pair]:
    pairs = []
    normalised = [normalize_query(r.query) for r in rows]
    for i in range(1, len(rows)):
        prev, cur = rows[i - 1], rows[i]
        if prev.user_id != cur.user_id:
            continue
        pairs.append(
            _Pair(
                user_id=cur.user_id,
                gap_minutes=(cur.timestamp - prev.timestamp) / 60.0,
                related=_related(normalised[i - 1], normalised[i]),
                is_boundary=prev.session_id != cur.session_id,
            )
        )
    return pairs


def boundary_scores(gold: Iterable[bool], predicted: Iterable[bool]) -> dict:
    """Precision, recall and F1 of predicted boundaries against gold boundaries.

    Parameters
    ----------
    gold, predicted : iterables of bool, same length
        One entry per pair of consecutive rows of a user.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (0.0 when undefined) and the counts ``n_gold``,
        ``n_predicted``, ``n_true_positive``.
    """
    n_gold = n_predicted = n_true_positive = 0
    for g, p in zip(gold, predicted, strict=True):
        n_gold += g
        n_predicted += p
        n_true_positive += g and p
    precision = n_true_positive / n_predicted if n_predicted else 0.0
    recall = n_true_positive / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "n_gold": int(n_gold),
        "n_predicted": int(n_predicted),
        "n_true_positive": int(n_true_positive),
    }


def _inactivity(pairs: Sequence[_Pair], minutes: float) -> dict:
    return boundary_scores((p.is_boundary for p in pairs), (p.gap_minutes > minutes for p in pairs))


def _overlap(pairs: Sequence[_Pair], related_minutes: float, unrelated_minutes: float) -> dict:
    predicted = (
        p.gap_minutes > (related_minutes if p.related else unrelated_minutes) for p in pairs
    )
    return boundary_scores((p.is_boundary for p in pairs), predicted)


def _half(user_id: str) -> int:
    # crc32, not hash(): str hashes are salted per process and the split must be reproducible.
    return zlib.crc32(user_id.encode("utf-8")) % 2


def evaluate_splitters(path: str | os.PathLike) -> dict:
    """Score session splitters against the gold boundaries of the Gayo-Avello file.

    Parameters
    ----------
    path : str or PathLike
        The gold file (see :func:`read_gold_sessions`).

    Returns
    -------
    dict (JSON-able)
        ``source``, ``n_rows``, ``n_users``, ``n_pairs``, ``n_gold_boundaries``;
        ``inactivity``: list of ``{"threshold_minutes", precision, recall, f1, n_*}`` over all
        users for :data:`INACTIVITY_MINUTES`; ``held_out``: the tuned comparison with
        ``tune_users``/``eval_users`` counts (users with at least two rows), the chosen
        parameters and, on both halves,
        the scores of ``inactivity_30``, ``inactivity_tuned`` and ``gap_overlap_tuned``.
    """
    rows = read_gold_sessions(path)
    pairs = _pairs(rows)
    result: dict = {
        "source": _GAYO_AVELLO,
        "n_rows": len(rows),
        "n_users": len({r.user_id for r in rows}),
        "n_pairs": len(pairs),
        "n_gold_boundaries": sum(p.is_boundary for p in pairs),
        "inactivity": [
            {"threshold_minutes": minutes, **_inactivity(pairs, minutes)}
            for minutes in INACTIVITY_MINUTES
        ],
    }

    tune = [p for p in pairs if _half(p.user_id) == 0]
    held = [p for p in pairs if _half(p.user_id) == 1]
    # Ties in F1 go to the earliest grid point (smaller thresholds): deterministic.
    best_inactivity = max(_INACTIVITY_GRID, key=lambda m: (_inactivity(tune, m)["f1"], -m))
    best_overlap = max(
        ((r, u) for r in _RELATED_GRID for u in _UNRELATED_GRID if u <= r),
        key=lambda ru: (_overlap(tune, *ru)["f1"], -ru[0], -ru[1]),
    )
    related_minutes, unrelated_minutes = best_overlap
    result["held_out"] = {
        "split": "crc32(AnonID) % 2: 0 = tune, 1 = eval",
        "tune_users": len({p.user_id for p in tune}),
        "eval_users": len({p.user_id for p in held}),
        "tune_pairs": len(tune),
        "eval_pairs": len(held),
        "inactivity_tuned_minutes": best_inactivity,
        "gap_overlap_related_minutes": related_minutes,
        "gap_overlap_unrelated_minutes": unrelated_minutes,
        "tune": {
            "inactivity_30": _inactivity(tune, 30),
            "inactivity_tuned": _inactivity(tune, best_inactivity),
            "gap_overlap_tuned": _overlap(tune, related_minutes, unrelated_minutes),
        },
        "eval": {
            "inactivity_30": _inactivity(held, 30),
            "inactivity_tuned": _inactivity(held, best_inactivity),
            "gap_overlap_tuned": _overlap(held, related_minutes, unrelated_minutes),
        },
    }
    return result


def _row(name: str, scores: dict) -> str:
    return (
        f"| {name} | {scores['precision']:.3f} | {scores['recall']:.3f} | {scores['f1']:.3f} "
        f"| {scores['n_predicted']} | {scores['n_gold']} |"
    )


def format_table(result: dict) -> str:
    """Render :func:`evaluate_splitters` output as Markdown tables.

    Parameters
    ----------
    result : dict
        As returned by :func:`evaluate_splitters`.

    Returns
    -------
    str
        Two tables: every inactivity threshold on all users, then the held-out comparison.
    """
    header = (
        "| splitter | precision | recall | F1 | predicted | gold |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    lines = [
        f"Session boundaries vs human gold ({result['n_rows']} rows, {result['n_users']} users, "
        f"{result['n_gold_boundaries']} gold boundaries in {result['n_pairs']} row pairs), "
        "all users:",
        "",
        header,
    ]
    lines += [
        _row(f"inactivity > {entry['threshold_minutes']} min", entry)
        for entry in result["inactivity"]
    ]
    held = result["held_out"]
    lines += [
        "",
        f"Held-out users ({held['eval_users']} users, {held['eval_pairs']} pairs; thresholds tuned "
        f"for F1 on the other {held['tune_users']} users):",
        "",
        header,
        _row("inactivity > 30 min (fixed)", held["eval"]["inactivity_30"]),
        _row(f"inactivity > {held['inactivity_tuned_minutes']} min (tuned)",
             held["eval"]["inactivity_tuned"]),
        _row(
            f"gap+overlap: related > {held['gap_overlap_related_minutes']} min, unrelated > "
            f"{held['gap_overlap_unrelated_minutes']} min (tuned)",
            held["eval"]["gap_overlap_tuned"],
        ),
    ]
    return "\n".join(lines) + "\n"
