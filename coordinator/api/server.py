"""Serves the HTTP API with uvicorn inside the coordinator's own event loop.

The server is one more task of the coordinator's ``TaskGroup``: :meth:`HttpServer.start` binds
the listening socket (so a taken port fails the coordinator's start, and port 0 resolves to a
real one), :meth:`HttpServer.run` serves until :meth:`HttpServer.stop`, which lets in-flight
requests finish. Signals stay with the CLI: uvicorn's own handlers are not installed.

Connections are bounded by :class:`~coordinator.config.HttpSettings`: the request line and
headers may take ``max_header_bytes`` (h11's incomplete-event limit: 400 beyond),
``max_concurrency`` connections plus requests in progress are served (503 beyond), an idle
keep-alive connection is closed after ``keep_alive_timeout_s``. uvicorn has no timeout for
reading a request's headers, so a client could hold a connection open by sending them a byte at
a time (slowloris); :func:`_h11_protocol` adds one, ``header_timeout_s``. The body's pace is
bounded by the API's middleware (``body_timeout_s``, :mod:`coordinator.api.middleware`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from coordinator.config import HttpSettings

__all__ = ["HttpServer"]

logger = logging.getLogger(__name__)


def _h11_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers take too long.

    The clock starts when the connection opens and again after each response; when it runs
    out while h11 still waits for a complete request (``IDLE``), the connection is closed. A
    request whose headers arrived in time is never cut, however long the app takes.
    """

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            if not self.transport.is_closing():
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11Protocol


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The CLI owns SIGTERM/SIGINT and drains the whole coordinator; uvicorn would take them.
        yield


class HttpServer:
    """One uvicorn server for an ASGI app, with the coordinator's lifecycle.

    Args:
        app: The ASGI application (``coordinator.api.app.create_api``).
        settings: Host and port (``port=0`` picks a free port, see :attr:`port`) and the
            connection limits.
        shutdown_grace_s: How long in-flight requests may take once stopping.
    """

    def __init__(self, app: Any, settings: HttpSettings, *, shutdown_grace_s: float = 5.0) -> None:
        if settings.port is None:
            raise ValueError("the HTTP API is disabled (port=None); do not build its server")
        self._settings = settings
        self._config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            # None: uvicorn's loggers propagate to the process's logging setup (coordinator.observability.logs).
            log_config=None,
            access_log=True,
            lifespan="off",
            timeout_graceful_shutdown=max(1, round(shutdown_grace_s)),
            server_header=False,
            # Always h11 (also where httptools is installed): the limits below are h11's.
            http=_h11_protocol(settings.header_timeout_s),
            h11_max_incomplete_event_size=settings.max_header_bytes,
            timeout_keep_alive=settings.keep_alive_timeout_s,
            limit_concurrency=settings.max_concurrency,
        )
        self._server = _Server(self._config)
        self._socket: socket.socket | None = None
        self._port: int | None = None
        self._stopped = False

    @property
    def port(self) -> int | None:
        """The bound port (the real one when configured as 0); None before :meth:`start`."""
        return self._port

    @property
    def started(self) -> bool:
        """True once the server accepts connections."""
        return bool(self._server.started)

    def start(self) -> None:
        """Bind the listening socket.

        Raises:
            OSError: The address cannot be bound (e.g. the port is taken).
        """
        if self._socket is not None:
            return
        host = self._settings.host
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            # SO_REUSEADDR: a restarted coordinator can bind while old connections linger.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, self._config.port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._port = int(sock.getsockname()[1])
        logger.info("HTTP API listening on %s:%d", host, self._port)

    async def run(self) -> None:
        """Serve until :meth:`stop`; in-flight requests finish within the grace period."""
        self.start()
        assert self._socket is not None
        if self._stopped:
            return
        await self._server.serve(sockets=[self._socket])

    async def wait_started(self, timeout_s: float = 10.0) -> None:
        """Wait until the server accepts connections (for tests and start-up ordering)."""
        async with asyncio.timeout(timeout_s):
            await self._server.ready.wait()

    def stop(self) -> None:
        """Ask :meth:`run` to stop accepting and return once in-flight requests end.

        Idempotent; safe before :meth:`run`.
        """
        self._stopped = True
        self._server.should_exit = True

    def close(self) -> None:
        """Release the socket if :meth:`run` never took it over. Idempotent."""
        self.stop()
        sock, self._socket = self._socket, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
