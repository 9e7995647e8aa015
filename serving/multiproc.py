"""``qac serve --processes N``: N server processes sharing one port through SO_REUSEPORT.

The parent reserves the port (a bound, never-listening socket with SO_REUSEPORT, so ``--port 0``
works and no unrelated server takes the port meanwhile), starts N ``qac serve --reuse-port``
children on it, prints ``serving on HOST:PORT`` once every child is healthy, and on SIGTERM/SIGINT
stops them all (SIGTERM, so each drains its in-flight RPCs). The kernel spreads incoming
*connections* over the children; a gRPC channel is one connection, so each client sticks to one
process.

Search: when the artifacts have a search index, every child serves Search, Feedback and previews
on one state directory opened in shared mode (``qac serve --shared-state``;
``serving.state.StateStore(shared=True)``): each child commits its decisions and feedback to the one
SQLite event log and, before each Search, Complete and Feedback, applies the events the other
children committed, in ``seq`` order, so a Feedback may reach any child (its decision is read from
the shared log) and every child learns from every Feedback. With ``--no-search`` the children serve
Complete (without previews) and Echo only. Each child memory-maps the same artifact files, so the
arrays' pages are shared between them.
"""
from __future__ import annotations

import logging
import queue
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TextIO

from serving.server import ServerConfig, format_address, search_loader_for

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 300.0
REPO_ROOT = Path(__file__).resolve().parents[1]


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) TCP socket with SO_REUSEPORT on ``host:port`` (0 = a free port).

    Raises
    ------
    OSError
        If the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock


def _child_command(config: ServerConfig, port: int, search: bool, blocklist: str | Path | None = None) -> list[str]:
    """A child's ``qac serve`` command line. Paths are made absolute here: children run in the repo root."""
    def path(p: str | Path) -> str:
        return str(Path(p).absolute())

    search_args = ((["--state", path(config.state_dir)] if config.state_dir is not None else []) + ["--shared-state"]
                   if search else ["--no-search"])
    return [sys.executable, "-m", "serving.cli", "serve", "--artifacts", path(config.artifacts),
            "--host", config.host, "--port", str(port), "--max-workers", str(config.max_workers),
            "--mode", config.mode, "--reuse-port", *search_args,
            *(["--blocklist", path(blocklist)] if blocklist else []),
            *(["--switch-interval-ms", str(config.switch_interval_ms)] if config.switch_interval_ms is not None else [])]


def serve_processes(config: ServerConfig, n_processes: int, *, out: TextIO | None = None,
                    search: bool = True, blocklist: str | Path | None = None) -> int:
    """Run ``n_processes`` servers on one port until SIGTERM/SIGINT.

    Parameters
    ----------
    config : ServerConfig
        ``host``, ``port`` (0 = pick one), ``max_workers``, ``mode``, ``artifacts`` and
        ``state_dir`` are passed to every child.
    n_processes : int
        Number of child processes, >= 1.
    out : text stream, optional
        Where the ready line ``serving on HOST:PORT`` goes (default ``sys.stdout``).
    search : bool
        Serve Search/Feedback/previews (when the artifacts have ``search/``) on one shared state
        directory; False = completion only (``--no-search``).
    blocklist : str or Path or None
        File of terms no completion may contain (``qac serve --blocklist``), passed to every child.

    Returns
    -------
    int
        0 after a requested shutdown with every child exiting 0; 1 if a child failed to start or
        exited on its own, or the port could not be reserved.

    Raises
    ------
    ValueError
        If ``n_processes < 1``.
    """
    if isinstance(n_processes, bool) or not isinstance(n_processes, int) or n_processes < 1:
        raise ValueError(f"processes must be a positive int, got {n_processes!r}")
    out = sys.stdout if out is None else out
    search = search and search_loader_for(config.artifacts) is not None
    try:
        reserved = reserve_port(config.host, config.port)
    except OSError as exc:
        print(f"error: could not bind {format_address(config.host, config.port)}: {exc}", file=sys.stderr)
        return 1
    port = reserved.getsockname()[1]
    events: queue.Queue[tuple[int, str | None]] = queue.Queue()
    children: list[subprocess.Popen] = []

    def pump(i: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            events.put((i, line))
        events.put((i, None))

    def request_stop(signum: int, frame: object) -> None:
        events.put((-1, None))

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    code = 0
    try:
        for i in range(n_processes):
            proc = subprocess.Popen(_child_command(config, port, search, blocklist), cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
            children.append(proc)
            threading.Thread(target=pump, args=(i, proc), daemon=True).start()
        ready: set[int] = set()
        while len(ready) < n_processes:
            i, line = events.get(timeout=READY_TIMEOUT_S)
            if line is None:
                logger.error("%s before every process was ready", "stopped" if i < 0 else f"process {i} exited")
                return 1
            if line.startswith("serving on "):
                ready.add(i)
        print(f"serving on {format_address(config.host, port)}", file=out, flush=True)
        logger.info("%d processes on port %d: pids %s", n_processes, port, [c.pid for c in children])
        while True:
            i, line = events.get()
            if i < 0:
                break
            if line is None:
                logger.error("process %d (pid %d) exited on its own", i, children[i].pid)
                code = 1
                break
    except queue.Empty:
        logger.error("not every process was ready after %.0f s", READY_TIMEOUT_S)
        code = 1
    finally:
        for proc in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in children:
            try:
                rc = proc.wait(config.grace_seconds + 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            code = code or (1 if rc else 0)
        reserved.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
