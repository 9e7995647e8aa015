"""qac.logs: AOL reading, malformed rows, sessions, points, time splits; real-log checks."""
from __future__ import annotations

import gc
import gzip
import random
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from qac.logs import (
    AOL_HEADER,
    QueryEvent,
    Session,
    SessionConfig,
    make_points,
    read_aol_log,
    split_log_file,
    split_sessions,
)

T0 = "2006-03-01 10:00:00"
T0_UNIX = int(datetime(2006, 3, 1, 10, tzinfo=timezone.utc).timestamp())


def _write(path: Path, rows: list[str], *, header: str = AOL_HEADER, gz: bool = False) -> Path:
    data = ("\n".join([header, *rows]) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _row(anon: str, query: str, time: str = T0, url: str = "") -> str:
    return "\t".join([anon, query, time, "", url])


def _event(user: str, query: str, minutes: float) -> QueryEvent:
    return QueryEvent(user, query, T0_UNIX + int(minutes * 60), ())


# --------------------------------------------------------------------------- read_aol_log


def test_read_groups_clicks_and_sorts(tmp_path: Path) -> None:
    rows = [
        _row("7", "Revenge Tactics", "2006-03-01 10:05:00", "http://a.com/"),
        _row("7", "Revenge Tactics", "2006-03-01 10:05:00", "http://b.com/"),
        _row("7", "Revenge Tactics", "2006-03-01 10:05:00", "http://a.com/"),
        _row("7", "earlier", "2006-03-01 09:00:00", ""),
        _row("3", "www.Google.com", "2006-03-02 00:00:00", "http://www.google.com/"),
        _row("7", "Revenge Tactics", "2006-03-01 11:00:00", "http://c.com/"),
    ]
    for gz in (False, True):
        # The name never says gzip: detection is by magic bytes.
        result = read_aol_log(_write(tmp_path / f"log{gz}.txt", rows, gz=gz))
        assert result.n_rows == 6 and result.n_malformed == 0 and result.n_empty_queries == 0
        assert [(e.user_id, e.query, e.click_urls) for e in result.events] == [
            ("7", "earlier", ()),
            ("7", "revenge tactics", ("http://a.com/", "http://b.com/")),
            ("7", "revenge tactics", ("http://c.com/",)),
            ("3", "www google com", ("http://www.google.com/",)),
        ]
        assert result.events[1].timestamp == T0_UNIX + 300


def test_read_equal_timestamps_keep_file_order(tmp_path: Path) -> None:
    rows = [_row("1", "b"), _row("1", "a"), _row("1", "c", "2006-03-01 09:59:59")]
    events = read_aol_log(_write(tmp_path / "log.tsv", rows)).events
    assert [e.query for e in events] == ["c", "b", "a"]


def test_read_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    data = "\r\n".join([AOL_HEADER, _row("1", "a", url="http://a.com/"), _row("1", "b")])
    path = tmp_path / "log.tsv"
    path.write_bytes(data.encode())
    result = read_aol_log(path)
    assert result.n_malformed == 0
    assert [(e.query, e.click_urls) for e in result.events] == [("a", ("http://a.com/",)), ("b", ())]


def test_read_fast_and_row_by_row_paths_agree(tmp_path: Path) -> None:
    # LF-only clean files take the whole-buffer path; a CR forces the row-by-row path.
    rng = random.Random(0)
    words = ["new", "York", "www.Google.com", "AT&T", "café", "...", "cheap flights", "n.y.c"]
    rows = []
    for _ in range(300):
        user = str(rng.choice([5, 17, 42]))
        query = " ".join(rng.sample(words, rng.randint(1, 2)))
        moment = f"2006-03-{rng.randint(1, 3):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 5)}0:00"
        rows.append(_row(user, query, moment, rng.choice(["", "http://a.com/", "http://b.com/"])))
    fast = read_aol_log(_write(tmp_path / "lf.tsv", rows))
    path = tmp_path / "crlf.tsv"
    path.write_bytes(("\r\n".join([AOL_HEADER, *rows]) + "\r\n").encode())
    slow = read_aol_log(path)
    assert fast == slow
    assert fast.n_empty_queries > 0 and len(fast.events) > 100


def test_read_since_until(tmp_path: Path) -> None:
    rows = [
        _row("1", "feb", "2006-02-28 23:59:59"),
        _row("1", "march", "2006-03-01 00:00:00"),
        _row("1", "april", "2006-04-30 23:59:59"),
        _row("1", "may", "2006-05-01 00:00:00"),
    ]
    path = _write(tmp_path / "log.tsv", rows)
    for since, until in [
        ("2006-03-01", "2006-05-01"),
        (date(2006, 3, 1), datetime(2006, 5, 1)),
        (datetime(2006, 3, 1, tzinfo=timezone.utc), "2006-05-01T00:00:00"),
    ]:
        events = read_aol_log(path, since=since, until=until).events
        assert [e.query for e in events] == ["march", "april"]
    with pytest.raises(ValueError, match="since"):
        read_aol_log(path, since="first of may")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"1\tq\t2006-03-01 10:00:00\t", "expected 5 columns, got 4"),
        (b"1\tq\t2006-03-01 10:00:00\t\t\textra", "expected 5 columns, got 6"),
        (b"", "expected 5 columns, got 1"),
        (b"abc\tq\t2006-03-01 10:00:00\t\t", "AnonID is not an integer"),
        (b"1.5\tq\t2006-03-01 10:00:00\t\t", "AnonID is not an integer"),
        (b"1\tq\t2006-13-01 10:00:00\t\t", "QueryTime is not"),
        (b"1\tq\t01/03/2006 10:00\t\t", "QueryTime is not"),
        (b"1\tq\t\t\t", "QueryTime is not"),
        (b"1\tq\xff\xfeuery\t2006-03-01 10:00:00\t\t", "invalid UTF-8"),
    ],
)
def test_read_malformed_rows(tmp_path: Path, line: bytes, reason: str) -> None:
    good = _row("1", "good query").encode()
    data = b"\n".join([AOL_HEADER.encode(), good, line, good.replace(b"good", b"next")]) + b"\n"
    path = tmp_path / "log.tsv"
    path.write_bytes(data)
    result = read_aol_log(path)
    assert result.n_rows == 3
    assert result.n_malformed == 1
    assert result.malformed_examples[0][0] == 3
    assert reason in result.malformed_examples[0][1]
    assert [e.query for e in result.events] == ["good query", "next query"]


def test_read_empty_queries_counted_and_dropped(tmp_path: Path) -> None:
    rows = [_row("1", "..."), _row("1", " - "), _row("1", "-", url="http://a.com/"), _row("1", "ok")]
    result = read_aol_log(_write(tmp_path / "log.tsv", rows))
    assert result.n_empty_queries == 3 and result.n_malformed == 0
    assert [e.query for e in result.events] == ["ok"]


def test_read_keeps_five_examples_in_line_order(tmp_path: Path) -> None:
    rows = [_row("x", "q")] * 4 + [_row("1", "q", "bad")] * 4
    result = read_aol_log(_write(tmp_path / "log.tsv", rows))
    assert result.n_malformed == 8
    assert [line for line, _ in result.malformed_examples] == [2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"AnonID,Query,QueryTime,ItemRank,ClickURL\n", "not an AOL query log"),
        (b"Query\nfoo\n", "not an AOL query log"),
        (b"1\tq\t2006-03-01 10:00:00\t\t\n", "not an AOL query log"),
    ],
)
def test_read_wrong_file_raises(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "wrong.tsv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_aol_log(path)


def test_read_header_only(tmp_path: Path) -> None:
    result = read_aol_log(_write(tmp_path / "log.tsv", []))
    assert result.events == [] and result.n_rows == 0


# --------------------------------------------------------------------------- sessions


@pytest.mark.parametrize("gap", [0, -5, 1.5, True, "1800"])
def test_session_config_rejects(gap: object) -> None:
    with pytest.raises(ValueError, match="gap_seconds"):
        SessionConfig(gap_seconds=gap)  # type: ignore[arg-type]


def test_split_sessions_gap_user_and_duplicates() -> None:
    events = [
        _event("1", "a", 0),
        _event("1", "a", 10),  # duplicate: dropped, but it keeps the session alive
        _event("1", "b", 40),  # 30 min after the duplicate: exactly the threshold, same session
        _event("1", "c", 70),  # 30 min + 0 s again
        _event("1", "d", 100.5),  # 30 min 30 s: new session
        _event("1", "d", 101),
        _event("2", "d", 101),  # new user: new session even without a gap
        _event("2", "a", 102),
        _event("2", "d", 103),  # not consecutive: kept
    ]
    sessions = split_sessions(events, SessionConfig(gap_seconds=1800))
    assert sessions == [
        Session("1", ("a", "b", "c"), (T0_UNIX, T0_UNIX + 2400, T0_UNIX + 4200)),
        Session("1", ("d",), (T0_UNIX + 6030,)),
        Session("2", ("d", "a", "d"), (T0_UNIX + 6060, T0_UNIX + 6120, T0_UNIX + 6180)),
    ]


def test_split_sessions_rejects_unsorted_input() -> None:
    with pytest.raises(ValueError, match="chronological"):
        split_sessions([_event("1", "a", 5), _event("1", "b", 0)], SessionConfig())
    with pytest.raises(ValueError, match="grouped by user"):
        split_sessions([_event("1", "a", 0), _event("2", "b", 0), _event("1", "c", 1)])


# --------------------------------------------------------------------------- points


def _sessions() -> list[Session]:
    return [
        Session("1", ("new york", "new york times", "nyt"), (0, 10, 20)),
        Session("1", ("lonely",), (100,)),
        Session("2", ("a", "bb", "ccc", "dddd"), (0, 1, 2, 3)),
    ]


def test_make_points_pairs_and_ranges() -> None:
    points = make_points(_sessions(), seed=0)
    assert [(p.prev_query, p.next_query, p.user_id, p.timestamp) for p in points] == [
        ("new york", "new york times", "1", 10),
        ("new york times", "nyt", "1", 20),
        ("a", "bb", "2", 1),
        ("bb", "ccc", "2", 2),
        ("ccc", "dddd", "2", 3),
    ]
    for point in points:
        assert 1 <= len(point.prefix) <= len(point.next_query)
        assert point.next_query.startswith(point.prefix)
    assert make_points([], seed=0) == []


def test_make_points_deterministic_and_uniform() -> None:
    assert make_points(_sessions(), seed=7) == make_points(_sessions(), seed=7)
    session = [Session("1", ("x", "abcd") * 2000, tuple(range(4000)))]
    lengths = [len(p.prefix) for p in make_points(session, seed=3) if p.next_query == "abcd"]
    counts = [lengths.count(m) for m in (1, 2, 3, 4)]
    assert min(counts) > 400 and sum(counts) == 2000  # ~500 each: all of 1..4, uniform
    other = [len(p.prefix) for p in make_points(session, seed=4) if p.next_query == "abcd"]
    assert other != lengths


# --------------------------------------------------------------------------- split_log_file


def test_split_log_file(tmp_path: Path) -> None:
    rows = [
        _row("1", "a", "2006-05-16 23:59:59", "http://a.com/"),
        _row("1", "b", "2006-05-17 00:00:00"),
        _row("2", "c", "not a time"),
        _row("2", "d", "2006-03-01 00:00:00"),
    ]
    src = _write(tmp_path / "src.tsv.gz", rows, gz=True)
    counts = split_log_file(src, tmp_path / "train.tsv.gz", tmp_path / "test.tsv", date(2006, 5, 17))
    assert (counts.n_train, counts.n_test, counts.n_skipped) == (2, 1, 1)
    train = gzip.decompress((tmp_path / "train.tsv.gz").read_bytes()).decode()
    assert train == "\n".join([AOL_HEADER, rows[0], rows[3]]) + "\n"
    assert (tmp_path / "test.tsv").read_text() == "\n".join([AOL_HEADER, rows[1]]) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.tsv.gz", "test.tsv", "train.tsv.gz"]
    assert [e.query for e in read_aol_log(tmp_path / "train.tsv.gz").events] == ["a", "d"]
    # Byte-identical output for identical input (no gzip timestamp).
    first = (tmp_path / "train.tsv.gz").read_bytes()
    split_log_file(src, tmp_path / "train.tsv.gz", tmp_path / "test.tsv", "2006-05-17")
    assert (tmp_path / "train.tsv.gz").read_bytes() == first


def test_split_log_file_wrong_header_writes_nothing(tmp_path: Path) -> None:
    src = _write(tmp_path / "src.tsv", [], header="Query")
    with pytest.raises(ValueError, match="not an AOL query log"):
        split_log_file(src, tmp_path / "a.tsv", tmp_path / "b.tsv", "2006-05-17")
    assert [p.name for p in tmp_path.iterdir()] == ["src.tsv"]


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_log(aol_log: Path):
    return read_aol_log(aol_log)


def test_real_log_reads_clean(real_log) -> None:
    assert real_log.n_rows == 381_242
    assert real_log.n_malformed == 0
    assert 250_000 < len(real_log.events) < real_log.n_rows
    users = [e.user_id for e in real_log.events]
    assert len(set(users)) == 1000
    # Grouped per user and chronological within a user.
    change = [i for i in range(1, len(users)) if users[i] != users[i - 1]]
    assert len(change) == 999
    assert all(
        a.timestamp <= b.timestamp
        for a, b in zip(real_log.events, real_log.events[1:])
        if a.user_id == b.user_id
    )
    first, last = min(e.timestamp for e in real_log.events), max(e.timestamp for e in real_log.events)
    assert datetime(2006, 3, 1, tzinfo=timezone.utc).timestamp() <= first
    assert last < datetime(2006, 5, 25, tzinfo=timezone.utc).timestamp()
    assert all(e.query and e.click_urls for e in real_log.events[:1000])


def test_real_log_sessions_and_points(real_log) -> None:
    sessions = split_sessions(real_log.events, SessionConfig())
    assert 50_000 < len(sessions) < len(real_log.events)
    points = make_points(sessions, seed=0)
    assert len(points) == sum(len(s.queries) - 1 for s in sessions) > 50_000
    assert all(p.prev_query != p.next_query for p in points)


def test_read_restores_gc_state(tmp_path: Path) -> None:
    path = _write(tmp_path / "log.tsv", [_row("1", "a")])
    assert gc.isenabled()
    read_aol_log(path)
    assert gc.isenabled()
    gc.disable()
    try:
        read_aol_log(path)
        assert not gc.isenabled()
    finally:
        gc.enable()
