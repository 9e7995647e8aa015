"""The ``--mode asyncio`` server: a ``grpc.aio`` server on an event loop in its own thread.

:class:`AioServer` gives a ``grpc.aio.Server`` the blocking interface of a ``grpc.Server``
(``add_insecure_port``, ``start``, ``stop(grace) -> threading.Event``, ``wait_for_termination``),
so :mod:`serving.server` drives both modes with the same code.

Handlers passed through :func:`inline_unary_handlers` run *on the event loop thread*, one at a
time: the request path is CPU-bound Python holding the GIL (a Complete is ~0.2 ms of it), so handing
each request to a worker thread buys no parallelism and costs a thread switch. Other sync handlers
(health, reflection) run in the ``migration_thread_pool``, as ``grpc.aio`` does for any sync handler.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent import futures
from typing import Any, Callable, NoReturn, Sequence

import grpc


class _AbortCalled(Exception):
    """Raised by :meth:`_InlineContext.abort`; carries the status to the async wrapper."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _InlineContext:
    """A sync servicer's view of a ``grpc.aio.ServicerContext``: ``abort`` raises (as it does on a
    sync server) instead of returning a coroutine; everything else is the aio context's."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise _AbortCalled(code, details)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _inline(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, grpc.aio.ServicerContext], Any]:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return behavior(request, _InlineContext(context))
        except _AbortCalled as exc:
            await context.abort(exc.code, exc.details)

    return handler


def inline_unary_handlers(handlers: dict[str, grpc.RpcMethodHandler]) -> dict[str, grpc.RpcMethodHandler]:
    """Wrap sync unary-unary handlers (name -> handler) to run on the aio event loop thread.

    Raises
    ------
    ValueError
        If a handler is not unary-unary or is already a coroutine function.
    """
    out = {}
    for name, h in handlers.items():
        if h.request_streaming or h.response_streaming or h.unary_unary is None:
            raise ValueError(f"{name}: only unary-unary handlers can run inline")
        if asyncio.iscoroutinefunction(h.unary_unary):
            raise ValueError(f"{name}: handler is already async")
        out[name] = grpc.unary_unary_rpc_method_handler(
            _inline(h.unary_unary), request_deserializer=h.request_deserializer,
            response_serializer=h.response_serializer)
    return out


class AioServer:
    """A ``grpc.aio`` server whose event loop runs in a daemon thread, behind a blocking interface.

    Parameters
    ----------
    options : sequence of (str, value)
        grpc channel arguments, as for ``grpc.server``.
    maximum_concurrent_rpcs : int or None
        As for ``grpc.server``.
    migration_workers : int
        Threads of the pool that runs sync (non-inline) handlers: health and reflection.
    """

    def __init__(self, options: Sequence[tuple[str, Any]], maximum_concurrent_rpcs: int | None,
                 migration_workers: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qac-aio", daemon=True)
        self._thread.start()
        self._pool = futures.ThreadPoolExecutor(max_workers=migration_workers, thread_name_prefix="qac-aio-sync")

        async def make() -> grpc.aio.Server:
            return grpc.aio.server(migration_thread_pool=self._pool, options=list(options),
                                   maximum_concurrent_rpcs=maximum_concurrent_rpcs)

        self._server = self._call(make())
        self._stopped = threading.Event()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _sync(self, fn: Callable, *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)

        return self._call(run())

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._sync(self._server.add_generic_rpc_handlers, handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: dict) -> None:
        self._sync(self._server.add_registered_method_handlers, service_name, handlers)

    def add_insecure_port(self, address: str) -> int:
        """Bind ``address``; returns the port. Raises RuntimeError if it cannot be bound."""
        return self._sync(self._server.add_insecure_port, address)

    def start(self) -> None:
        self._call(self._server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Stop accepting RPCs, let in-flight ones finish for ``grace`` seconds, then stop the loop.

        Returns an event that is set once everything has stopped.
        """
        async def stop() -> None:
            await self._server.stop(grace)

        def done(_: Any) -> None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._pool.shutdown(wait=False)
            self._stopped.set()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).add_done_callback(done)
        else:
            self._stopped.set()
        return self._stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until stopped; returns True on timeout (as ``grpc.Server.wait_for_termination``)."""
        return not self._stopped.wait(timeout)
