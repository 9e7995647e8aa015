"""gRPC server factory and the ``serve`` loop for ``qac.v1.QueryService``.

Lifecycle (what a load balancer or orchestrator sees through ``grpc.health.v1``):

1. :func:`create_server` binds the port; health for ``""`` and ``"qac.v1.QueryService"`` is
   NOT_SERVING, and every RPC answers UNAVAILABLE.
2. :meth:`QacServer.set_search_service` (optional) warms up and installs the search service;
   without one, Search / Feedback / previews answer UNIMPLEMENTED.
3. :meth:`QacServer.set_completer` calls ``completer.warmup()`` (if it has one), installs the
   completer, then sets SERVING. It can be called again to swap in a new model while serving.
4. :meth:`QacServer.stop` sets NOT_SERVING first, then stops with a grace period so in-flight
   requests finish; :meth:`QacServer.close_search_service` then lets the search service write its
   final state.

:func:`serve` strings these together for the CLI: listen, load + warm up in a background thread,
print ``serving on HOST:PORT`` once healthy, run until SIGTERM/SIGINT, shut down gracefully.

Imports stay light: this module never imports build code; the real completer and search service
are imported only inside :func:`load_completer` / :func:`load_search_service`.
"""
from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving.search_types import SearchServiceLike
from serving.aio import AioServer, inline_unary_handlers
from serving.echo import ECHO_SERVICE_NAME, echo_method_handlers
from serving.servicer import SERVICE_NAME, CompleterLike, QueryServiceServicer, register_handlers, rpc_method_handlers
from serving.validation import RequestLimits

logger = logging.getLogger(__name__)

HEALTH_SERVICE_NAMES = ("", SERVICE_NAME)  # "" is the server as a whole
SERVER_MODES = ("threads", "asyncio")


@dataclass(frozen=True)
class ServerConfig:
    """Server settings; the only place their defaults live.

    Parameters
    ----------
    host : str
        Interface to bind ("0.0.0.0" / "::" for all).
    port : int
        TCP port, 0 = pick a free one (the bound port is returned / printed).
    max_workers : int
        ``mode="threads"``: threads answering RPCs. ``mode="asyncio"``: threads for the sync
        health and reflection handlers (the RPCs themselves run on the event loop thread).
    mode : {"threads", "asyncio"}
        ``"threads"``: ``grpc.server`` over a thread pool. ``"asyncio"``: ``grpc.aio`` server,
        RPCs answered on its event loop thread (:mod:`serving.aio`). Chosen by measurement
        (README, "Load test").
    reuse_port : bool
        Set SO_REUSEPORT so several processes can listen on one port (``qac serve --processes``);
        off by default, so a second server on a busy port fails instead of silently sharing it.
    artifacts : str or Path or None
        Artifact directory the completer (and, from its ``search/`` subdirectory, the search
        service) is loaded from (required by :func:`serve`).
    state_dir : str or Path or None
        Directory of the search service's online state (event log, snapshots); None = the search
        service's own default (see ``serving.search_service.load_search_service``).
    grace_seconds : float
        On shutdown, how long in-flight RPCs may take before they are cancelled.
    max_concurrent_rpcs : int or None
        RPCs beyond this are rejected with RESOURCE_EXHAUSTED instead of queueing; None = no limit.
    max_receive_message_bytes : int
        Largest request accepted (requests are tiny; the grpc default is 4 MiB).
    limits : RequestLimits
        Per-field request limits.
    switch_interval_ms : float or None
        ``sys.setswitchinterval`` for the serving process, in milliseconds: how long a thread that
        wants the GIL waits before the running one is asked to drop it (Python's default: 5 ms).
        None = leave the interpreter's default. README, "Load test".
    """

    host: str = "127.0.0.1"
    port: int = 0
    max_workers: int = 8
    mode: str = "threads"
    reuse_port: bool = False
    artifacts: str | Path | None = None
    state_dir: str | Path | None = None
    grace_seconds: float = 5.0
    max_concurrent_rpcs: int | None = None
    max_receive_message_bytes: int = 1 << 20
    limits: RequestLimits = field(default_factory=RequestLimits)
    switch_interval_ms: float | None = None

    def __post_init__(self) -> None:
        if self.switch_interval_ms is not None and not 0.001 <= self.switch_interval_ms <= 1000:
            raise ValueError(f"switch_interval_ms must be in 0.001..1000 or None, got {self.switch_interval_ms!r}")
        if not self.host:
            raise ValueError("host must not be empty")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {self.port!r}")
        if isinstance(self.max_workers, bool) or not isinstance(self.max_workers, int) or self.max_workers < 1:
            raise ValueError(f"max_workers must be a positive int, got {self.max_workers!r}")
        if self.mode not in SERVER_MODES:
            raise ValueError(f"mode must be one of {', '.join(SERVER_MODES)}, got {self.mode!r}")
        if not self.grace_seconds >= 0:
            raise ValueError(f"grace_seconds must be >= 0, got {self.grace_seconds!r}")
        if self.max_concurrent_rpcs is not None and self.max_concurrent_rpcs < 1:
            raise ValueError(f"max_concurrent_rpcs must be >= 1 or None, got {self.max_concurrent_rpcs!r}")
        if self.max_receive_message_bytes < 1024:
            raise ValueError(f"max_receive_message_bytes must be >= 1024, got {self.max_receive_message_bytes!r}")
        if not isinstance(self.limits, RequestLimits):
            raise ValueError(f"limits must be a RequestLimits, got {type(self.limits).__name__}")


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal bracketed (``[::1]:50051``)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class QacServer:
    """A bound (not yet started) grpc server plus its health state and servicer.

    Attributes
    ----------
    grpc_server : grpc.Server
    servicer : QueryServiceServicer
    health : grpc_health.v1.health.HealthServicer
    port : int
        The bound port.
    """

    def __init__(self, grpc_server: grpc.Server, servicer: QueryServiceServicer,
                 health_servicer: health.HealthServicer, port: int) -> None:
        self.grpc_server = grpc_server
        self.servicer = servicer
        self.health = health_servicer
        self.port = port

    def start(self) -> None:
        self.grpc_server.start()

    def set_search_service(self, search_service: SearchServiceLike | None) -> None:
        """Warm up ``search_service`` (``warmup()`` if present) and install it; health unchanged.

        Call it before :meth:`set_completer` when loading, so that the server never reports
        SERVING while Search would still answer UNIMPLEMENTED. ``None`` removes search.
        """
        warmup = getattr(search_service, "warmup", None)
        if callable(warmup):
            warmup()
        self.servicer.set_search_service(search_service)

    def close_search_service(self) -> None:
        """Call ``close()`` on the installed search service, if it has one (after :meth:`stop`).

        Raises whatever ``close()`` raises.
        """
        close = getattr(self.servicer.search_service, "close", None)
        if callable(close):
            close()

    def set_completer(self, completer: CompleterLike) -> None:
        """Warm up ``completer`` (``warmup()`` if present), install it, then report SERVING.

        Safe to call while serving to swap models: requests already running finish on the old
        completer, and health stays SERVING throughout.
        """
        warmup = getattr(completer, "warmup", None)
        if callable(warmup):
            warmup()
        self.servicer.set_completer(completer)
        for name in HEALTH_SERVICE_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None) -> threading.Event:
        """Report NOT_SERVING (permanently), then stop; returns an event set once stopped."""
        self.health.enter_graceful_shutdown()
        return self.grpc_server.stop(grace)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def create_server(config: ServerConfig, completer: CompleterLike | None = None,
                  search_service: SearchServiceLike | None = None) -> tuple[QacServer, int]:
    """Build and bind the server (not started).

    Parameters
    ----------
    config : ServerConfig
    completer : CompleterLike or None
        If given, it is warmed up and installed before returning, so health is SERVING as soon
        as the server starts; if None, install one later with :meth:`QacServer.set_completer`.
    search_service : SearchServiceLike or None
        If given, warmed up and installed (before the completer); None = no search on this
        server unless installed later with :meth:`QacServer.set_search_service`.

    Returns
    -------
    server : QacServer
        Call ``server.start()``; stop with ``server.stop(grace)``.
    port : int
        The bound port (useful with ``config.port == 0``).

    Raises
    ------
    RuntimeError
        If ``host:port`` cannot be bound.
    """
    options = [
        ("grpc.max_receive_message_length", config.max_receive_message_bytes),
        # Linux SO_REUSEPORT (grpc's default) would let a second server silently share the port.
        ("grpc.so_reuseport", 1 if config.reuse_port else 0),
    ]
    servicer = QueryServiceServicer(None, config.limits)
    services = {SERVICE_NAME: rpc_method_handlers(servicer), ECHO_SERVICE_NAME: echo_method_handlers()}
    if config.mode == "asyncio":
        grpc_server = AioServer(options, config.max_concurrent_rpcs, migration_workers=config.max_workers)
        services = {name: inline_unary_handlers(h) for name, h in services.items()}
    else:
        grpc_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="qac-rpc"),
            options=options,
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
    for name, handlers in services.items():
        register_handlers(grpc_server, name, handlers)

    health_servicer = health.HealthServicer()
    for name in HEALTH_SERVICE_NAMES:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)

    reflection.enable_server_reflection(
        (SERVICE_NAME, ECHO_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
    )

    address = format_address(config.host, config.port)
    try:
        port = grpc_server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"could not bind {address}: {exc}") from exc
    if port == 0:  # older grpc versions return 0 instead of raising
        raise RuntimeError(f"could not bind {address}")

    server = QacServer(grpc_server, servicer, health_servicer, port)
    if search_service is not None:
        server.set_search_service(search_service)
    if completer is not None:
        server.set_completer(completer)
    return server, port


def serve(
    config: ServerConfig,
    load_completer: Callable[[str | Path | None], CompleterLike],
    load_search_service: Callable[[str | Path | None, str | Path | None, CompleterLike], SearchServiceLike]
    | None = None,
    *,
    out: TextIO | None = None,
    stop_event: threading.Event | None = None,
) -> int:
    """Run the server until SIGTERM/SIGINT (or ``stop_event``), then shut down gracefully.

    Listens first (health NOT_SERVING), then in a background thread calls
    ``load_completer(config.artifacts)`` and, if given,
    ``load_search_service(config.artifacts, config.state_dir, completer)``, warms both up and installs them
    (search first); once healthy, writes the single line ``serving on HOST:PORT`` to ``out``
    (stdout) and flushes it. On shutdown, after in-flight requests finished, it calls the search
    service's ``close()`` (if it has one).

    Parameters
    ----------
    config : ServerConfig
    load_completer : callable
        ``load_completer(artifacts) -> completer``, e.g. ``qac.completer.Completer.load``.
    load_search_service : callable or None
        ``load_search_service(artifacts, state_dir) -> search service``, e.g.
        :func:`load_search_service`; None = serve without search.
    out : text stream, optional
        Where the ready line goes (default ``sys.stdout``).
    stop_event : threading.Event, optional
        Set it to stop, e.g. when ``serve`` runs outside the main thread (signal handlers can
        only be installed from the main thread; elsewhere they are not installed).

    Returns
    -------
    int
        Process exit code: 0 after a requested shutdown; 1 if loading the completer or the search
        service failed, or if the search service's ``close()`` failed.
    """
    out = sys.stdout if out is None else out
    if config.switch_interval_ms is not None:
        sys.setswitchinterval(config.switch_interval_ms / 1000.0)
    stop_requested = threading.Event() if stop_event is None else stop_event
    wake = threading.Event()
    loaded = threading.Event()
    load_errors: list[BaseException] = []

    def request_stop(signum: int, frame: object) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop_requested.set()
        wake.set()

    previous_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous_handlers[sig] = signal.signal(sig, request_stop)
    if stop_event is not None:
        threading.Thread(target=lambda: (stop_event.wait(), wake.set()),
                         name="qac-stop-watch", daemon=True).start()

    try:
        server, port = create_server(config)
        server.start()
        address = format_address(config.host, port)
        logger.info("listening on %s; NOT_SERVING until the models are loaded", address)

        def load() -> None:
            search_service = None
            try:
                completer = load_completer(config.artifacts)
                if load_search_service is not None:
                    search_service = load_search_service(config.artifacts, config.state_dir, completer)
                    server.set_search_service(search_service)  # installed: the main thread closes it
                server.set_completer(completer)
            except BaseException as exc:  # reported by the main thread
                load_errors.append(exc)
                if search_service is not None and server.servicer.search_service is not search_service:
                    # Loaded but its warmup failed: nobody else holds it, so close it here.
                    close = getattr(search_service, "close", None)
                    if callable(close):
                        try:
                            close()
                        except Exception:
                            logger.exception("closing the search service after a failed warmup failed")
            finally:
                loaded.set()
                wake.set()

        threading.Thread(target=load, name="qac-load", daemon=True).start()
        while not (stop_requested.is_set() or loaded.is_set()):
            wake.wait()
            wake.clear()

        if load_errors and not stop_requested.is_set():
            logger.error("could not load the models from %s", config.artifacts,
                         exc_info=load_errors[0])
            server.stop(0).wait()
            _close_search_service(server)
            return 1
        if not stop_requested.is_set():
            print(f"serving on {address}", file=out, flush=True)
            while not stop_requested.is_set():
                wake.wait()
                wake.clear()
        logger.info("stopping (grace %.1f s)", config.grace_seconds)
        server.stop(config.grace_seconds).wait()
        if not loaded.wait(config.grace_seconds):
            # Stopped while still loading and the loader did not finish within the grace period: a
            # search service it installs later is not closed. Nothing was served from it, and
            # its acknowledged events are already durable, so only a snapshot is skipped.
            logger.warning("stopping before the models finished loading")
        closed = _close_search_service(server)
        logger.info("stopped")
        return 0 if closed else 1
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


def _close_search_service(server: QacServer) -> bool:
    """Close the search service (if any); False (and logged) if ``close()`` raised."""
    try:
        server.close_search_service()
    except Exception:
        logger.exception("closing the search service failed; its final snapshot may be missing "
                         "(acknowledged events are in its log and will be replayed)")
        return False
    return True


def load_completer(artifacts: str | Path | None, blocklist: str | Path | None = None) -> CompleterLike:
    """Load the real completer (``qac.completer.Completer.load``); imported lazily.

    ``blocklist``: a file of terms removed from every answer, on top of the artifact's own."""
    if artifacts is None:
        raise ValueError("artifacts: an artifact directory is required")
    from qac.blocklist import Blocklist  # noqa: PLC0415 - keep `import serving.server` light
    from qac.completer import Completer  # noqa: PLC0415

    return Completer.load(artifacts, blocklist=Blocklist.load(blocklist) if blocklist else None)


def load_search_service(artifacts: str | Path | None,
                        state_dir: str | Path | None, completer: CompleterLike | None = None, *,
                        shared_state: bool = False) -> SearchServiceLike:
    """Load the real search service (``serving.search_service.load_search_service``); imported lazily.
    ``shared_state``: open the state directory together with other server processes."""
    if artifacts is None:
        raise ValueError("artifacts: an artifact directory is required")
    from serving.search_service import load_search_service as load  # noqa: PLC0415 - keep imports light

    return load(artifacts, state_dir, completer, shared=shared_state)


def search_loader_for(artifacts: str | Path | None) -> Callable | None:
    """:func:`load_search_service` if ``artifacts`` has a ``search/`` subdirectory, else None."""
    if artifacts is not None and Path(artifacts, "search").is_dir():
        return load_search_service
    return None


def main_serve(args: argparse.Namespace) -> int:
    """``qac serve``: args has ``artifacts``, ``host``, ``port``, ``max_workers`` and optionally
    ``state`` (directory of the search service's online state), ``mode`` (``threads`` or
    ``asyncio``), ``processes`` (> 1: :func:`serving.multiproc.serve_processes`), ``reuse_port``,
    ``shared_state`` (open ``state`` together with other processes) and ``no_search``; returns the
    exit code.

    Search is served only if the artifact directory has a ``search/`` subdirectory.
    Logging is configured by the caller (``serving.cli.main``), as only CLIs configure logging.
    """
    state_dir = getattr(args, "state", None)
    try:
        config = ServerConfig(host=args.host, port=args.port, max_workers=args.max_workers,
                              mode=getattr(args, "mode", None) or ServerConfig.mode,
                              reuse_port=bool(getattr(args, "reuse_port", False)),
                              artifacts=args.artifacts, state_dir=state_dir,
                              switch_interval_ms=getattr(args, "switch_interval_ms", None))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    blocklist = getattr(args, "blocklist", None)
    if blocklist:
        from qac.blocklist import Blocklist, BlocklistError  # noqa: PLC0415

        try:
            Blocklist.load(blocklist)  # fail before binding, with the file and line
        except BlocklistError as exc:
            print(f"error: --blocklist {exc}", file=sys.stderr)
            return 2
    n_processes = getattr(args, "processes", 1) or 1
    if n_processes != 1:
        from serving.multiproc import serve_processes  # noqa: PLC0415 - only this mode needs it

        return serve_processes(config, n_processes, search=not getattr(args, "no_search", False),
                               blocklist=blocklist)
    search_loader = None if getattr(args, "no_search", False) else search_loader_for(config.artifacts)
    if search_loader is not None and getattr(args, "shared_state", False):
        search_loader = functools.partial(search_loader, shared_state=True)
    if search_loader is None:
        logger.info("no search/ in %s: serving completion only", config.artifacts)
        if state_dir is not None:
            logger.warning("--state %s is ignored: the artifacts have no search index", state_dir)
    try:
        return serve(config, functools.partial(load_completer, blocklist=blocklist) if blocklist else load_completer,
                     search_loader)
    except RuntimeError as exc:  # bind failure
        print(f"error: {exc}", file=sys.stderr)
        return 1

