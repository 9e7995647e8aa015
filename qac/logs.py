"""AOL query-log ingestion, session splitting and completion training points (build code).

Data flow: ``read_aol_log`` (raw click rows -> one :class:`QueryEvent` per distinct
(AnonID, Query, QueryTime)) -> ``split_sessions`` (30-minute inactivity rule, as PECOS qp2q) ->
``make_points`` (one (previous query, prefix, next query) point per consecutive pair).

The log format is AOL's original release (Pass et al., "A Picture of Search", InfoScale 2006): a
tab-separated file with header ``AnonID  Query  QueryTime  ItemRank  ClickURL`` and one row per
click; a query with several clicks repeats on several rows with the same QueryTime.
"""
from __future__ import annotations

import calendar
import contextlib
import gc
import gzip
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from qac.text import normalize_query

__all__ = [
    "AOL_HEADER",
    "QueryEvent",
    "LogReadResult",
    "read_aol_log",
    "SessionConfig",
    "Session",
    "split_sessions",
    "CompletionPoint",
    "make_points",
    "SplitCounts",
    "split_log_file",
]

AOL_HEADER = "AnonID\tQuery\tQueryTime\tItemRank\tClickURL"
_N_COLUMNS = 5
_MAX_MALFORMED_EXAMPLES = 5
_GZIP_MAGIC = b"\x1f\x8b"
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_STRICT_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_STRICT_TIMES = re.compile(r"(?:[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\n)*")
_ANON_ID = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class QueryEvent:
    """One issued query of one user.

    Attributes
    ----------
    user_id : str
        AOL AnonID in canonical decimal form.
    query : str
        Normalised query (:func:`qac.text.normalize_query`), never ``""``.
    timestamp : int
        Unix seconds; naive log times are read as UTC.
    click_urls : tuple of str
        Distinct non-empty click URLs of the query, in log order.
    """

    user_id: str
    query: str
    timestamp: int
    click_urls: tuple[str, ...]


@dataclass(frozen=True)
class LogReadResult:
    """Outcome of :func:`read_aol_log`.

    Attributes
    ----------
    events : list of QueryEvent
        Grouped by user (order of first appearance in the file), chronological within a user
        (stable: equal timestamps keep file order).
    n_rows : int
        Data rows read (header excluded), malformed and filtered rows included.
    n_malformed : int
        Rows skipped as malformed: wrong column count, invalid UTF-8, non-integer AnonID or a
        QueryTime that does not parse as ``%Y-%m-%d %H:%M:%S``.
    n_empty_queries : int
        Well-formed rows inside the time window whose query normalises to ``""`` (dropped).
    malformed_examples : tuple of (int, str)
        Up to 5 ``(line_number, reason)`` pairs; line numbers are 1-based file lines (header = 1).
    """

    events: list[QueryEvent]
    n_rows: int
    n_malformed: int
    n_empty_queries: int
    malformed_examples: tuple[tuple[int, str], ...]


def _read_bytes(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:2] == _GZIP_MAGIC:
        return gzip.decompress(data)
    return data


def _parse_time(text: str) -> int | None:
    """Unix seconds of a naive UTC ``%Y-%m-%d %H:%M:%S`` string, or None when unparseable."""
    try:
        if _STRICT_TIME.fullmatch(text) is not None:
            moment = datetime.fromisoformat(text)
        else:
            # strptime also accepts unpadded fields ("2006-3-1 7:05:00"); rare, so slow is fine.
            moment = datetime.strptime(text, _TIME_FORMAT)
    except ValueError:
        return None
    return calendar.timegm(moment.timetuple())


def _parse_time_column(texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Vectorised :func:`_parse_time`: (Unix seconds int64, validity mask or None if all valid)."""
    if not texts:
        return np.zeros(0, dtype=np.int64), None
    if _STRICT_TIMES.fullmatch("\n".join(texts) + "\n") is not None:
        try:
            return np.array(texts, dtype="datetime64[s]").astype(np.int64), None
        except ValueError:
            pass  # a well-shaped but impossible value (month 13): find it one by one
    parsed = {text: _parse_time(text) for text in dict.fromkeys(texts)}
    values = list(map(parsed.__getitem__, texts))
    valid = np.array([value is not None for value in values], dtype=bool)
    seconds = np.array([0 if value is None else value for value in values], dtype=np.int64)
    return seconds, valid


def _to_unix(bound: datetime | date | str | None, name: str) -> int | None:
    if bound is None:
        return None
    if isinstance(bound, str):
        try:
            bound = datetime.fromisoformat(bound)
        except ValueError:
            raise ValueError(f"{name}: not an ISO date or datetime: {bound!r}") from None
    if isinstance(bound, datetime):
        if bound.tzinfo is not None:
            return int(bound.timestamp())
        return calendar.timegm(bound.timetuple())
    if isinstance(bound, date):
        return calendar.timegm(bound.timetuple())
    raise ValueError(f"{name}: expected datetime, date or ISO string, got {type(bound).__name__}")


def _check_header(data: bytes, path: str | os.PathLike) -> int:
    """Validate the AOL header; return the offset of the first data byte."""
    end = data.find(b"\n")
    header = data if end < 0 else data[:end]
    if not data:
        raise ValueError(f"{path}: empty file, expected AOL header {AOL_HEADER!r}")
    header = header.rstrip(b"\r")
    if header.startswith(b"\xef\xbb\xbf"):
        header = header[3:]
    if header != AOL_HEADER.encode():
        shown = header[:120].decode("utf-8", errors="replace")
        raise ValueError(
            f"{path}: not an AOL query log: header is {shown!r}, expected {AOL_HEADER!r} "
            "(tab-separated)"
        )
    return len(data) if end < 0 else end + 1


def _body_lines(body: bytes) -> list[bytes]:
    # Split on b"\n" only: str.splitlines would also break inside queries at \x1c, \x85, U+2028.
    lines = body.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def _columns_fast(body: bytes) -> list[list[str]] | None:
    """Columns of a clean body (valid UTF-8, LF, exactly 5 fields per row), else None."""
    if not body or b"\r" in body:
        return None
    if not body.endswith(b"\n"):
        body += b"\n"
    raw = np.frombuffer(body, dtype=np.uint8)
    newlines = np.flatnonzero(raw == 10)
    tabs = np.flatnonzero(raw == 9)
    tabs_before = np.searchsorted(tabs, newlines)
    if not np.all(np.diff(tabs_before, prepend=0) == _N_COLUMNS - 1):
        return None
    try:
        text = body[:-1].decode("utf-8")
    except UnicodeDecodeError:
        return None
    flat = text.replace("\n", "\t").split("\t")
    return [flat[k::_N_COLUMNS] for k in range(_N_COLUMNS)]


def _columns_slow(
    body: bytes, malformed: list[tuple[int, str]]
) -> tuple[list[list[str]], list[int], int]:
    """Columns of the well-formed rows, their line numbers, and the number of data rows."""
    columns: list[list[str]] = [[] for _ in range(_N_COLUMNS)]
    line_numbers: list[int] = []
    lines = _body_lines(body)
    for index, raw in enumerate(lines):
        line_number = index + 2
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            malformed.append((line_number, "invalid UTF-8"))
            continue
        fields = text.rstrip("\r").split("\t")
        if len(fields) != _N_COLUMNS:
            malformed.append((line_number, f"expected {_N_COLUMNS} columns, got {len(fields)}"))
            continue
        for column, value in zip(columns, fields):
            column.append(value)
        line_numbers.append(line_number)
    return columns, line_numbers, len(lines)


def read_aol_log(
    path: str | os.PathLike,
    *,
    since: datetime | date | str | None = None,
    until: datetime | date | str | None = None,
) -> LogReadResult:
    """Read an AOL click log into query events.

    Parameters
    ----------
    path : str or PathLike
        Tab-separated log, gzip-compressed or plain (detected by the gzip magic bytes, not by the
        file name), UTF-8, with header ``AnonID\\tQuery\\tQueryTime\\tItemRank\\tClickURL``.
    since, until : datetime, date, ISO string or None
        Keep events with ``since <= QueryTime < until``. Naive values are UTC.

    Returns
    -------
    LogReadResult
        One :class:`QueryEvent` per distinct (AnonID, raw Query, QueryTime); the click URLs of its
        rows are gathered (deduplicated, log order, empty dropped). Rows whose query normalises to
        ``""`` are counted in ``n_empty_queries`` and dropped; malformed rows are counted and
        skipped, never fatal.

    Raises
    ------
    ValueError
        If the file is empty or its header is not the AOL header (a wrong file, not a bad row),
        or if ``since``/``until`` cannot be parsed.
    OSError
        If the file cannot be read.

    Notes
    -----
    A clean file (the usual case) is cut into columns with a few whole-buffer operations and its
    times parsed by numpy in one call; a file with bad rows takes a row-by-row path with the same
    result. Each distinct query is normalised once. Per-row Python work is essentially the
    construction of the events themselves.
    """
    lo = _to_unix(since, "since")
    hi = _to_unix(until, "until")
    data = _read_bytes(path)
    body = data[_check_header(data, path):]
    # Millions of short-lived tuples and strings and ~300k events would trigger many cyclic-GC
    # passes that find no cycles (about a fifth of the run time); none are created here.
    with _gc_paused():
        return _read_body(body, lo, hi)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_body(body: bytes, lo: int | None, hi: int | None) -> LogReadResult:

    malformed: list[tuple[int, str]] = []
    columns = _columns_fast(body)
    line_numbers: list[int] | None = None
    if columns is None:
        columns, line_numbers, n_rows = _columns_slow(body, malformed)
    else:
        n_rows = len(columns[0])

    anon_col, _query_col, time_col, _rank_col, _url_col = columns
    user_of: dict[str, str | None] = {}
    for anon in set(anon_col):
        stripped = anon.strip()
        user_of[anon] = str(int(stripped)) if _ANON_ID.fullmatch(stripped) else None
    timestamps, time_valid = _parse_time_column(time_col)
    if time_valid is not None or None in user_of.values():
        keep = []
        for i, (anon, moment) in enumerate(zip(anon_col, time_col)):
            line_number = i + 2 if line_numbers is None else line_numbers[i]
            if user_of[anon] is None:
                malformed.append((line_number, f"AnonID is not an integer: {anon[:40]!r}"))
            elif time_valid is not None and not time_valid[i]:
                malformed.append(
                    (line_number, f"QueryTime is not {_TIME_FORMAT}: {moment[:40]!r}")
                )
            else:
                keep.append(i)
        columns = [[column[i] for i in keep] for column in columns]
        timestamps = timestamps[np.array(keep, dtype=np.int64)]
    anon_col, query_col, time_col, _rank_col, url_col = columns
    malformed.sort()

    events, n_empty = _events(anon_col, query_col, time_col, url_col, timestamps, user_of, lo, hi)
    return LogReadResult(
        events=events,
        n_rows=n_rows,
        n_malformed=len(malformed),
        n_empty_queries=n_empty,
        malformed_examples=tuple(malformed[:_MAX_MALFORMED_EXAMPLES]),
    )


def _events(
    anon_col: list[str],
    query_col: list[str],
    time_col: list[str],
    url_col: list[str],
    timestamps: np.ndarray,
    user_of: dict[str, str | None],
    lo: int | None,
    hi: int | None,
) -> tuple[list[QueryEvent], int]:
    """Well-formed rows -> (events grouped and sorted, number of in-window empty-query rows).

    Whole-column operations (C-level dict/zip/map and numpy) keep the per-row Python work to the
    unavoidable construction of one :class:`QueryEvent` per event.
    """
    n = len(anon_col)
    rows = np.arange(n, dtype=np.int64)
    # Users are ordered by first appearance of their canonical id.
    users_in_order = dict.fromkeys(map(user_of.__getitem__, dict.fromkeys(anon_col)))
    code_of_user = {user: code for code, user in enumerate(users_in_order)}
    code_of_anon = {anon: code_of_user[user_of[anon]] for anon in set(anon_col)}
    user_codes = np.fromiter(map(code_of_anon.__getitem__, anon_col), dtype=np.int64, count=n)

    # First row of every (AnonID, raw Query, QueryTime): a reversed dict build keeps the first.
    keys = list(zip(anon_col, query_col, time_col))
    first_row = dict(zip(reversed(keys), range(n - 1, -1, -1)))
    if len(first_row) == n:
        first = rows
    else:
        first = np.fromiter(map(first_row.__getitem__, keys), dtype=np.int64, count=n)
    del keys, first_row

    query_of = {raw: normalize_query(raw) for raw in dict.fromkeys(query_col)}
    empty_raw = {raw for raw, query in query_of.items() if not query}
    is_empty = np.zeros(n, dtype=bool)
    if empty_raw:
        is_empty[[i for i, raw in enumerate(query_col) if raw in empty_raw]] = True
    in_window = np.ones(n, dtype=bool)
    if lo is not None:
        in_window &= timestamps >= lo
    if hi is not None:
        in_window &= timestamps < hi
    n_empty = int(np.count_nonzero(in_window & is_empty))

    event_rows = np.flatnonzero((first == rows) & in_window & ~is_empty)
    order = event_rows[np.lexsort((timestamps[event_rows], user_codes[event_rows]))]
    more_urls: dict[int, list[str]] = {}
    for row, head in zip(np.flatnonzero(first != rows).tolist(), first[first != rows].tolist()):
        more_urls.setdefault(head, []).append(url_col[row])

    order_list = order.tolist()
    urls = list(map(url_col.__getitem__, order_list))
    click_urls = [(url,) if url else () for url in urls]
    for position, row in enumerate(order_list):
        more = more_urls.get(row)
        if more is not None:
            click_urls[position] = tuple(u for u in dict.fromkeys([urls[position], *more]) if u)
    events = list(
        map(
            QueryEvent,
            map(user_of.__getitem__, map(anon_col.__getitem__, order_list)),
            map(query_of.__getitem__, map(query_col.__getitem__, order_list)),
            timestamps[order].tolist(),
            click_urls,
        )
    )
    return events, n_empty


@dataclass(frozen=True)
class SessionConfig:
    """Session splitting parameters.

    Attributes
    ----------
    gap_seconds : int
        A new session starts when the gap between consecutive events of a user is strictly
        greater than this (PECOS qp2q uses 30 minutes). Must be > 0.
    """

    gap_seconds: int = 1800

    def __post_init__(self) -> None:
        if isinstance(self.gap_seconds, bool) or not isinstance(self.gap_seconds, (int, np.integer)):
            raise ValueError(f"gap_seconds must be an int, got {self.gap_seconds!r}")
        if self.gap_seconds <= 0:
            raise ValueError(f"gap_seconds must be > 0, got {self.gap_seconds}")


@dataclass(frozen=True)
class Session:
    """Consecutive queries of one user without a long pause.

    Attributes
    ----------
    user_id : str
    queries : tuple of str
        Normalised queries, no two consecutive ones equal.
    timestamps : tuple of int
        Unix seconds of each query (first occurrence of a repeated query), non-decreasing.
    """

    user_id: str
    queries: tuple[str, ...]
    timestamps: tuple[int, ...]


def split_sessions(
    events: Iterable[QueryEvent], config: SessionConfig = SessionConfig()
) -> list[Session]:
    """Split a user-grouped, chronological event stream into sessions.

    A session ends when the user changes or when the gap between two consecutive events of the
    user is strictly greater than ``config.gap_seconds`` (the inactivity rule of PECOS qp2q).
    Gaps are measured between raw consecutive events, so a repeated query keeps a session alive.
    Consecutive duplicate queries within a session are dropped (the first is kept); sessions of
    length 1 are kept.

    Parameters
    ----------
    events : iterable of QueryEvent
        Grouped by user and chronological within a user, as :func:`read_aol_log` returns them.
    config : SessionConfig

    Returns
    -------
    list of Session
        In event order.

    Raises
    ------
    ValueError
        If a user's timestamps decrease or a user reappears after another user's events.
    """
    gap = int(config.gap_seconds)
    sessions: list[Session] = []
    seen_users: set[str] = set()
    user: str | None = None
    queries: list[str] = []
    timestamps: list[int] = []
    last_time = 0

    for event in events:
        if event.user_id != user:
            if queries:
                sessions.append(Session(user, tuple(queries), tuple(timestamps)))
            if event.user_id in seen_users:
                raise ValueError(
                    f"events: user {event.user_id!r} reappears after other users; "
                    "events must be grouped by user"
                )
            seen_users.add(event.user_id)
            user = event.user_id
            queries, timestamps = [event.query], [event.timestamp]
        else:
            if event.timestamp < last_time:
                raise ValueError(
                    f"events: timestamps of user {user!r} decrease ({last_time} -> "
                    f"{event.timestamp}); events must be chronological within a user"
                )
            if event.timestamp - last_time > gap:
                sessions.append(Session(user, tuple(queries), tuple(timestamps)))
                queries, timestamps = [event.query], [event.timestamp]
            elif event.query != queries[-1]:
                queries.append(event.query)
                timestamps.append(event.timestamp)
        last_time = event.timestamp
    if queries:
        sessions.append(Session(user, tuple(queries), tuple(timestamps)))
    return sessions


@dataclass(frozen=True)
class CompletionPoint:
    """One training or evaluation point: complete ``prefix`` to ``next_query`` after ``prev_query``.

    Attributes
    ----------
    prev_query : str
        Previous query of the session (normalised).
    prefix : str
        ``next_query[:m]`` with ``1 <= m <= len(next_query)``; may end with a space.
    next_query : str
        The query the user issued (the label).
    user_id : str
    timestamp : int
        Unix seconds of ``next_query``.
    """

    prev_query: str
    prefix: str
    next_query: str
    user_id: str
    timestamp: int


def make_points(sessions: Sequence[Session], seed: int) -> list[CompletionPoint]:
    """Make one completion point per consecutive query pair of every session.

    The prefix length of each point is drawn uniformly from ``1..len(next_query)`` (characters,
    inclusive) as in PECOS qp2q data generation. All lengths are drawn in one call,
    ``numpy.random.default_rng(seed).integers(1, len(next_query) + 1)`` over the pairs in session
    order, so the points are a deterministic function of ``(sessions, seed)``.

    Parameters
    ----------
    sessions : sequence of Session
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    list of CompletionPoint
        ``sum(len(s.queries) - 1 for s in sessions)`` points, in session order.
    """
    pairs: list[tuple[str, str, str, int]] = []
    for session in sessions:
        queries = session.queries
        for j in range(1, len(queries)):
            pairs.append((queries[j - 1], queries[j], session.user_id, session.timestamps[j]))
    if not pairs:
        return []
    highs = np.fromiter((len(pair[1]) + 1 for pair in pairs), dtype=np.int64, count=len(pairs))
    lengths = np.random.default_rng(seed).integers(1, highs).tolist()
    return [
        CompletionPoint(prev, nxt[:length], nxt, user_id, timestamp)
        for (prev, nxt, user_id, timestamp), length in zip(pairs, lengths)
    ]


@dataclass(frozen=True)
class SplitCounts:
    """Row counts written by :func:`split_log_file` (header excluded)."""

    n_train: int
    n_test: int
    n_skipped: int


def _open_output(path: Path):
    directory = path.parent if str(path.parent) else Path(".")
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.chmod(temp_name, 0o644)  # mkstemp creates 0600; a data split is meant to be shared
    raw = os.fdopen(fd, "wb")
    if path.name.endswith(".gz"):
        # mtime=0 and no file name: identical input gives byte-identical output.
        return temp_name, raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
    return temp_name, raw, raw


def split_log_file(
    src: str | os.PathLike,
    dst_train: str | os.PathLike,
    dst_test: str | os.PathLike,
    at: date | datetime | str,
) -> SplitCounts:
    """Split an AOL log by time into a train file (QueryTime < at) and a test file (>= at).

    Raw rows are copied byte for byte, header kept in both. An output is gzip-compressed when its
    name ends with ``.gz``. Both files are written to temporary files beside the destination and
    moved into place with ``os.replace``, so a crash never leaves half a file. Rows with the wrong
    column count or an unparseable QueryTime cannot be placed and are skipped (counted); any other
    row is copied as is, so :func:`read_aol_log` still sees and counts its defects.

    Parameters
    ----------
    src : path
        AOL log (gzip or plain).
    dst_train, dst_test : path
    at : date, datetime or ISO string
        Split moment; naive values are UTC.

    Returns
    -------
    SplitCounts

    Raises
    ------
    ValueError
        If ``src`` is not an AOL log (see :func:`read_aol_log`) or ``at`` cannot be parsed.
    """
    cut = _to_unix(at, "at")
    data = _read_bytes(src)
    start = _check_header(data, src)
    header = data[:start].rstrip(b"\n")
    train: list[bytes] = [header]
    test: list[bytes] = [header]
    n_skipped = 0
    time_cache: dict[bytes, int | None] = {}
    for raw in _body_lines(data[start:]):
        fields = raw.rstrip(b"\r").split(b"\t")
        if len(fields) != _N_COLUMNS:
            n_skipped += 1
            continue
        timestamp = time_cache.get(fields[2], -1)
        if timestamp == -1:
            try:
                timestamp = _parse_time(fields[2].decode("utf-8"))
            except UnicodeDecodeError:
                timestamp = None
            time_cache[fields[2]] = timestamp
        if timestamp is None:
            n_skipped += 1
            continue
        (train if timestamp < cut else test).append(raw)

    outputs = []
    try:
        for dst, rows in ((Path(dst_train), train), (Path(dst_test), test)):
            temp_name, raw_handle, handle = _open_output(dst)
            outputs.append((temp_name, dst))
            with raw_handle:
                handle.write(b"\n".join(rows) + b"\n")
                if handle is not raw_handle:
                    handle.close()
        for temp_name, dst in outputs:
            os.replace(temp_name, dst)
    except BaseException:
        for temp_name, _dst in outputs:
            if os.path.exists(temp_name):
                os.unlink(temp_name)
        raise
    return SplitCounts(n_train=len(train) - 1, n_test=len(test) - 1, n_skipped=n_skipped)
