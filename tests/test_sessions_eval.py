"""qac.sessions_eval: gold parsing, boundary scoring, and the real Gayo-Avello file."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from qac.sessions_eval import (
    INACTIVITY_MINUTES,
    boundary_scores,
    evaluate_splitters,
    format_table,
    read_gold_sessions,
)

_LINES = [
    # row id; AnonID; query; url; local time; epoch; gold session
    "1;10;new york hotels;http://a.com;01/03/2006 10:00;1141207200;0",
    "3;10;cheap flights;;01/03/2006 10:40;1141209600;1",
    "2;10;new york hotel deals;;01/03/2006 10:05;1141207500;0",
    '4;10;"dustin;s passions page";http://b.com;01/03/2006 12:00;1141214400;2',
    "5;20;weather;;01/03/2006 10:00;1141207200;3",
    "6;20;weather;;01/03/2006 10:00;1141207200;3",
    "7;20;weather radar;;01/03/2006 11:00;1141210800;3",
]


def _gold(tmp_path: Path, lines: list[str] = _LINES, *, gz: bool = True) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path = tmp_path / "gold.csv.gz"
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_read_gold_sorts_and_unquotes(tmp_path: Path) -> None:
    for gz in (True, False):
        rows = read_gold_sessions(_gold(tmp_path, gz=gz))
        assert [r.row_id for r in rows] == [1, 2, 3, 4, 5, 6, 7]
        assert rows[3].query == "dustin;s passions page"
        assert rows[3].session_id == 2 and rows[3].timestamp == 1141214400


@pytest.mark.parametrize(
    "line", ["1;10;q;;01/03/2006 10:00;1141207200", "x;10;q;;01/03/2006 10:00;1141207200;0",
             "1;10;q;;01/03/2006 10:00;soon;0"]
)
def test_read_gold_rejects_bad_lines(tmp_path: Path, line: str) -> None:
    with pytest.raises(ValueError, match=":1:"):
        read_gold_sessions(_gold(tmp_path, [line]))


def test_boundary_scores() -> None:
    scores = boundary_scores([True, True, False, False], [True, False, True, False])
    assert scores["precision"] == 0.5 and scores["recall"] == 0.5 and scores["f1"] == 0.5
    assert boundary_scores([False], [False])["f1"] == 0.0
    with pytest.raises(ValueError):
        boundary_scores([True], [True, False])


def test_evaluate_small_file(tmp_path: Path) -> None:
    result = evaluate_splitters(_gold(tmp_path))
    # Pairs: (1,2) 5 min same; (2,3) 35 min cut; (3,4) 80 min cut; (5,6) 0 min same (duplicate
    # rows are kept); (6,7) 60 min same session. Gold boundaries: 2.
    assert result["n_pairs"] == 5 and result["n_gold_boundaries"] == 2
    by_threshold = {e["threshold_minutes"]: e for e in result["inactivity"]}
    assert [e["threshold_minutes"] for e in result["inactivity"]] == list(INACTIVITY_MINUTES)
    assert by_threshold[30]["n_predicted"] == 3 and by_threshold[30]["n_true_positive"] == 2
    # A 60-minute gap is not > 60: (6,7) is cut at 45 but not at 60.
    assert by_threshold[45]["n_predicted"] == 2 and by_threshold[45]["precision"] == 0.5
    assert by_threshold[60]["n_predicted"] == 1 and by_threshold[60]["precision"] == 1.0
    assert by_threshold[60]["recall"] == 0.5
    json.dumps(result)


@pytest.fixture(scope="module")
def real_result(shared_data: Path) -> dict:
    return evaluate_splitters(shared_data / "aol" / "aol_gayo_avello_sessions.csv.gz")


def test_real_gold_file(real_result: dict) -> None:
    assert real_result["n_rows"] == 10_235 and real_result["n_users"] == 215
    assert 0 < real_result["n_gold_boundaries"] < real_result["n_pairs"]
    recalls = [e["recall"] for e in real_result["inactivity"]]
    precisions = [e["precision"] for e in real_result["inactivity"]]
    assert all(0 < v <= 1 for v in recalls + precisions)
    # A longer inactivity threshold cuts less: recall falls and precision rises.
    assert recalls == sorted(recalls, reverse=True)
    assert precisions == sorted(precisions)
    held = real_result["held_out"]
    assert held["tune_users"] + held["eval_users"] <= real_result["n_users"]
    for scores in held["eval"].values():
        assert 0 < scores["precision"] <= 1 and 0 < scores["recall"] <= 1
    json.dumps(real_result)


def test_format_table(real_result: dict) -> None:
    table = format_table(real_result)
    assert "| inactivity > 30 min |" in table
    assert "gap+overlap" in table
    rows = [line for line in table.splitlines() if line.startswith(("| inactivity", "| gap"))]
    assert len(rows) == len(INACTIVITY_MINUTES) + 3
