"""Crash safety of serving.state with real processes and ``kill -9``.

A worker (``tests/state_crash_worker.py``) acknowledges each feedback line only after the event is
committed and applied. The test streams lines to it much faster than it acknowledges them, kills it
with SIGKILL in the middle of the stream (with requests in flight, periodic snapshots on), restarts
it, and checks:

- every acknowledged event is in the log with exactly the fields that were sent;
- the only committed-but-unacknowledged events are in-flight ones, immediately after the last ack,
  and complete;
- the recovered state equals a straightforward recomputation from the committed log, which is the
  acknowledged events plus those in-flight extras;
- this holds across several kill/restart cycles and a final graceful shutdown.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.test_state import _events, _twin

TIMEOUT_S = 20


def _start(mode: str, state_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.state_crash_worker", mode, str(state_dir), *extra],
                            cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)


def _recover(state_dir: Path) -> dict:
    proc = _start("recover", state_dir)
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, out
    return json.loads(out)


def _committed(state_dir: Path) -> list[tuple]:
    conn = sqlite3.connect(state_dir / "state.sqlite3")
    try:
        return conn.execute("SELECT f.seq, f.decision_id, f.item, f.position, f.payload, d.payload "
                            "FROM feedback f JOIN decisions d USING (decision_id) ORDER BY f.seq").fetchall()
    finally:
        conn.close()


def _stream_and_kill(state_dir: Path, lines: list[dict], kill_after: int, delay_s: float) -> dict[int, int]:
    """Send all ``lines``; SIGKILL the worker ``delay_s`` after reading its ``kill_after``-th ack
    (the delay lets it commit a few more lines whose acks the test never reads: in-flight events).
    Returns {line index: seq} of the acks read."""
    proc = _start("serve", state_dir, "--snapshot-every", "40")
    timer = threading.Timer(TIMEOUT_S, proc.kill)
    timer.start()
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("READY "), ready

        def write_all() -> None:
            try:
                for line in lines:
                    proc.stdin.write(json.dumps(line) + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass  # the worker was killed mid-stream: expected

        writer = threading.Thread(target=write_all, daemon=True)
        writer.start()
        acks: dict[int, int] = {}
        for i in range(len(lines)):
            reply = proc.stdout.readline()
            assert reply.startswith("ACK "), (i, reply)
            acks[i] = int(reply.split()[1])
            if len(acks) == kill_after:
                time.sleep(delay_s)
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=TIMEOUT_S)
        assert proc.returncode == -signal.SIGKILL, "worker finished before it was killed"
        writer.join(timeout=TIMEOUT_S)
        return acks
    finally:
        timer.cancel()
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass


def _check_log(state_dir: Path, sent: list[dict], acked: dict[int, int], accounted: set[int]) -> list[tuple]:
    """Every acked line is committed as sent; the other committed lines are either ``accounted``
    (in-flight extras of earlier cycles) or complete in-flight lines right after this cycle's last
    ack. Adds the new extras to ``accounted``; returns the committed rows."""
    rows = _committed(state_dir)
    by_key = {(r[1], r[2]): r for r in rows}
    assert len(by_key) == len(rows)
    seqs = [r[0] for r in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    sent_index = {(line["decision_id"], line["item"]): i for i, line in enumerate(sent)}
    assert set(by_key) <= set(sent_index), "an event that was never sent is in the log"
    for i, line in enumerate(sent):
        row = by_key.get((line["decision_id"], line["item"]))
        if i in acked:
            assert row is not None, f"acknowledged line {i} (seq {acked[i]}) lost"
            assert row[0] == acked[i]
        if row is not None:  # complete, exactly as sent
            assert row[3] == line["position"] and json.loads(row[4]) == {"reward": line["reward"]}
            assert json.loads(row[5]) == {"query": line["query"], "arm": line["arm"]}
    last_acked = max(acked)
    extras = sorted(i for k, i in sent_index.items() if k in by_key and i not in acked and i not in accounted)
    assert extras == list(range(last_acked + 1, last_acked + 1 + len(extras))), extras
    accounted.update(acked, extras)
    return rows


def _twin_of_rows(rows: list[tuple]) -> dict:
    return _twin([(r[0], json.loads(r[5])["query"], json.loads(r[5])["arm"], r[2], json.loads(r[4])["reward"])
                  for r in rows])


def test_kill9_mid_stream_loses_no_acknowledged_event(tmp_path):
    state_dir = tmp_path / "state"
    events = _events(1500, seed=11)
    all_acked: dict[int, int] = {}
    accounted: set[int] = set()
    pos = 0
    n_extras = []
    for cycle, (kill_after, delay_s) in enumerate(((300, 0.0), (250, 0.002), (350, 0.02))):
        acks = _stream_and_kill(state_dir, events[pos:], kill_after, delay_s)
        rec = _recover(state_dir)
        all_acked.update({pos + i: seq for i, seq in acks.items()})
        n_before = len(accounted)
        rows = _check_log(state_dir, events, all_acked, accounted)
        n_extras.append(len(accounted) - n_before - len(acks))
        assert rec["state"] == _twin_of_rows(rows), f"cycle {cycle}: recovered state != replay of the log"
        assert rec["recovery"]["last_seq"] == rows[-1][0] >= max(all_acked.values())
        assert rec["recovery"]["snapshot_seq"] > 0
        pos = max(accounted) + 1  # resume after every committed line
    print(f"committed-but-unacknowledged in-flight events per kill: {n_extras}")

    # Graceful end: the rest of the stream plus a re-send of an acked line (a duplicate), then EOF.
    proc = _start("serve", state_dir)
    dup = {**events[0], "new": False}
    out, _ = proc.communicate("".join(json.dumps(e) + "\n" for e in events[pos:] + [dup]), timeout=TIMEOUT_S)
    assert proc.returncode == 0
    replies = out.splitlines()
    assert replies[0].startswith("READY ")
    assert all(r.startswith("ACK ") for r in replies[1:-1]) and replies[-1] == f"DUP {all_acked[0]}"
    rows = _committed(state_dir)
    assert len(rows) == len(events)
    rec = _recover(state_dir)
    assert rec["state"] == _twin_of_rows(rows)
    assert rec["recovery"]["n_replayed"] == 0  # graceful close wrote a final snapshot
