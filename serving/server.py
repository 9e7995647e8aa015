"""gRPC server factory and the ``serve`` loop for ``qac.v1.QueryService``.

Lifecycle (what a load balancer or orchestrator sees through ``grpc.health.v1``):

1. :func:`create_server` binds the port; health for ``""`` and ``"qac.v1.QueryService"`` is
   NOT_SERVING, and ``Complete`` answers UNAVAILABLE.
2. :meth:`QacServer.set_completer` calls ``completer.warmup()`` (if it has one), installs the
   completer, then sets SERVING. It can be called again to swap in a new model while serving.
3. :meth:`QacServer.stop` sets NOT_SERVING first, then stops with a grace period so in-flight
   requests finish.

:func:`serve` strings these together for the CLI: listen, load + warm up in a background thread,
print ``serving on HOST:PORT`` once healthy, run until SIGTERM/SIGINT, shut down gracefully.

Imports stay light: this module never imports build code; the real completer is imported only
inside :func:`load_completer`.
"""
from __future__ import annotations

import argparse
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

from serving.servicer import SERVICE_NAME, CompleterLike, QueryServiceServicer, add_to_server
from serving.validation import RequestLimits

logger = logging.getLogger(__name__)

HEALTH_SERVICE_NAMES = ("", SERVICE_NAME)  # "" is the server as a whole


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
        Threads answering RPCs.
    artifacts : str or Path or None
        Artifact directory the completer is loaded from (required by :func:`serve`).
    grace_seconds : float
        On shutdown, how long in-flight RPCs may take before they are cancelled.
    max_concurrent_rpcs : int or None
        RPCs beyond this are rejected with RESOURCE_EXHAUSTED instead of queueing; None = no limit.
    max_receive_message_bytes : int
        Largest request accepted (requests are tiny; the grpc default is 4 MiB).
    limits : RequestLimits
        Per-field request limits.
    """

    host: str = "127.0.0.1"
    port: int = 0
    max_workers: int = 8
    artifacts: str | Path | None = None
    grace_seconds: float = 5.0
    max_concurrent_rpcs: int | None = None
    max_receive_message_bytes: int = 1 << 20
    limits: RequestLimits = field(default_factory=RequestLimits)

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, got {self.port!r}")
        if isinstance(self.max_workers, bool) or not isinstance(self.max_workers, int) or self.max_workers < 1:
            raise ValueError(f"max_workers must be a positive int, got {self.max_workers!r}")
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


def create_server(config: ServerConfig, completer: CompleterLike | None = None) -> tuple[QacServer, int]:
    """Build and bind the server (not started).

    Parameters
    ----------
    config : ServerConfig
    completer : CompleterLike or None
        If given, it is warmed up and installed before returning, so health is SERVING as soon
        as the server starts; if None, install one later with :meth:`QacServer.set_completer`.

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
        ("grpc.so_reuseport", 0),
    ]
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="qac-rpc"),
        options=options,
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )
    servicer = QueryServiceServicer(None, config.limits)
    add_to_server(servicer, grpc_server)

    health_servicer = health.HealthServicer()
    for name in HEALTH_SERVICE_NAMES:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)

    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server
    )

    address = format_address(config.host, config.port)
    try:
        port = grpc_server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"could not bind {address}: {exc}") from exc
    if port == 0:  # older grpc versions return 0 instead of raising
        raise RuntimeError(f"could not bind {address}")

    server = QacServer(grpc_server, servicer, health_servicer, port)
    if completer is not None:
        server.set_completer(completer)
    return server, port


def serve(
    config: ServerConfig,
    load_completer: Callable[[str | Path | None], CompleterLike],
    *,
    out: TextIO | None = None,
    stop_event: threading.Event | None = None,
) -> int:
    """Run the server until SIGTERM/SIGINT (or ``stop_event``), then shut down gracefully.

    Listens first (health NOT_SERVING), then calls ``load_completer(config.artifacts)`` in a
    background thread and warms the result up; once healthy, writes the single line
    ``serving on HOST:PORT`` to ``out`` (stdout) and flushes it.

    Parameters
    ----------
    config : ServerConfig
    load_completer : callable
        ``load_completer(artifacts) -> completer``, e.g. ``qac.completer.Completer.load``.
    out : text stream, optional
        Where the ready line goes (default ``sys.stdout``).
    stop_event : threading.Event, optional
        Set it to stop, e.g. when ``serve`` runs outside the main thread (signal handlers can
        only be installed from the main thread; elsewhere they are not installed).

    Returns
    -------
    int
        Process exit code: 0 after a requested shutdown, 1 if loading the completer failed.
    """
    out = sys.stdout if out is None else out
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
        logger.info("listening on %s; NOT_SERVING until the completer is loaded", address)

        def load() -> None:
            try:
                server.set_completer(load_completer(config.artifacts))
            except BaseException as exc:  # reported by the main thread
                load_errors.append(exc)
            finally:
                loaded.set()
                wake.set()

        threading.Thread(target=load, name="qac-load", daemon=True).start()
        while not (stop_requested.is_set() or loaded.is_set()):
            wake.wait()
            wake.clear()

        if load_errors and not stop_requested.is_set():
            logger.error("could not load the completer from %s", config.artifacts,
                         exc_info=load_errors[0])
            server.stop(0).wait()
            return 1
        if not stop_requested.is_set():
            print(f"serving on {address}", file=out, flush=True)
            while not stop_requested.is_set():
                wake.wait()
                wake.clear()
        logger.info("stopping (grace %.1f s)", config.grace_seconds)
        server.stop(config.grace_seconds).wait()
        logger.info("stopped")
        return 0
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


def load_completer(artifacts: str | Path | None) -> CompleterLike:
    """Load the real completer (``qac.completer.Completer.load``); imported lazily."""
    if artifacts is None:
        raise ValueError("artifacts: an artifact directory is required")
    from qac.completer import Completer  # noqa: PLC0415 - keep `import serving.server` light

    return Completer.load(artifacts)


def main_serve(args: argparse.Namespace) -> int:
    """``qac serve``: args has ``artifacts``, ``host``, ``port``, ``max_workers``; returns exit code.

    Logging is configured by the caller (``serving.cli.main``), as only CLIs configure logging.
    """
    try:
        config = ServerConfig(host=args.host, port=args.port, max_workers=args.max_workers,
                              artifacts=args.artifacts)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return serve(config, load_completer)
    except RuntimeError as exc:  # bind failure
        print(f"error: {exc}", file=sys.stderr)
        return 1

