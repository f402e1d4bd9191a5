"""The HTTP API's ASGI middleware, outermost first (``create_api`` installs them in this order).

- :class:`ResponseHeadersMiddleware`: ``X-Content-Type-Options: nosniff`` and
  ``Cache-Control: no-store`` on every answer (saga data must not sit in shared caches).
- :class:`ErrorBoundaryMiddleware`: an exception no handler took becomes a JSON 500 (or 503),
  logged once, and goes no further (see :mod:`coordinator.api.errors`).
- :class:`BodyLimitMiddleware`: a request body larger than ``max_body_bytes`` is refused with
  413 before it is parsed (at once when ``Content-Length`` says so, else as the stream passes
  the limit), and a body whose next chunk takes longer than ``body_timeout_s`` with 408.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator.api.errors import error_response, unexpected_error_response

__all__ = [
    "BodyLimitMiddleware",
    "BodyTimeoutError",
    "BodyTooLargeError",
    "ErrorBoundaryMiddleware",
    "ResponseHeadersMiddleware",
]

_SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store"))


class ResponseHeadersMiddleware:
    """Adds :data:`_SECURITY_HEADERS` to every HTTP answer that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend((n, v) for n, v in _SECURITY_HEADERS if n not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    template = getattr(route, "path", None) or "(no route)"
    return f"{scope.get('method', '?')} {template}"


class ErrorBoundaryMiddleware:
    """Answers what escaped the exception handlers, logs it once, and does not re-raise."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            response = unexpected_error_response(exc, _route(scope))
            if not started:
                await response(scope, receive, send)
            # Else the answer is half sent: the server closes the connection; it is logged.


class BodyTooLargeError(HTTPException):
    """The request body passed ``max_body_bytes`` (413).

    An ``HTTPException``: FastAPI lets those raised while it reads the body through unchanged,
    so the API's handler answers with the usual JSON error.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"the request body is larger than {limit} bytes (SAGA_HTTP__MAX_BODY_BYTES)"
        )


class BodyTimeoutError(HTTPException):
    """The next chunk of the request body did not arrive within ``body_timeout_s`` (408)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            408, f"the request body stalled for {timeout_s:g} s (SAGA_HTTP__BODY_TIMEOUT_S)"
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server rejects it; the stream is counted anyway
    return None


class BodyLimitMiddleware:
    """Caps request bodies at ``max_bytes`` and bounds the wait for each chunk.

    Args:
        app: The wrapped application.
        max_bytes: The largest body accepted.
        chunk_timeout_s: The longest wait for the next chunk while the body is incomplete.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, chunk_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.chunk_timeout_s = chunk_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            # Refused unread; the server drops the connection rather than drain the body.
            too_large = BodyTooLargeError(self.max_bytes)
            await error_response(413, "payload_too_large", str(too_large.detail))(
                scope, receive, send
            )
            return
        received = 0
        complete = False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:
                # After the body: the app only waits for a disconnect, which may take forever.
                return await receive()
            try:
                async with asyncio.timeout(self.chunk_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError(self.chunk_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (BodyTooLargeError, BodyTimeoutError) as exc:
            # Raised where no handler saw it (e.g. a body read outside FastAPI's own).
            if started:
                raise
            code = "payload_too_large" if exc.status_code == 413 else "request_timeout"
            await error_response(exc.status_code, code, str(exc.detail))(scope, receive, send)
