"""ASGI wrappers around the serving app: the request body's limits and the request metrics.

Limits (``Limits``): a request body over ``max_body_bytes`` is answered 413 without being
parsed, from its Content-Length before a byte of it is read, or as soon as a chunked body
passes the limit; a body that stalls for ``idle_timeout`` seconds is answered 408. Both close
the connection. (The server closes connections that send no request for ``idle_timeout``
seconds, see :mod:`mlkube.serve.server`.)

"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mlkube.serve.protocol import (
    RequestError,
    error_response,
)
from mlkube.serve.repository import Repository

# How long a body over the limit is read and thrown away before the 413, so that a client
# that sends the whole body before reading (no "Expect: 100-continue") gets the 413, not a
# reset connection.
DRAIN_SECONDS = 5.0


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


async def _drain(receive: Any, seconds: float) -> None:
    """Read and drop the rest of a request body, for at most ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
    except TimeoutError:
        return


class Limits:
    """ASGI wrapper: a request body over ``max_body_bytes`` is answered 413 unparsed, and one
    that stalls for ``idle_timeout`` seconds 408; both close the connection.

    A Content-Length over the limit is answered before the body is read: at once if the
    client waits for "100 Continue", else after throwing away what arrives within
    ``DRAIN_SECONDS`` (a client that sends before it reads then sees the 413). A chunked body
    is counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app: Any, max_body_bytes: int, idle_timeout: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.idle_timeout = idle_timeout

    def too_large(self, size: int | None) -> RequestError:
        """The 413 for a body of ``size`` bytes (``None``: a chunked body, not read to its end)."""
        what = f"is {size} bytes, over" if size is not None else "passed"
        return RequestError(413, f"the request body {what} this server's limit of "
                                 f"{self.max_body_bytes} bytes (--max-body-bytes): send fewer "
                                 "rows per request", close=True)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        declared = int(length) if length is not None and length.strip().isdigit() else None
        if declared is not None and declared > self.max_body_bytes:
            expect = (_header(scope, b"expect") or b"").lower()
            if expect != b"100-continue":
                await _drain(receive, DRAIN_SECONDS)
            error = self.too_large(declared)
            await error_response(error.status, str(error), close=True)(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Any) -> Any:
        """``receive`` that counts the body's bytes and times out a stalled body."""
        received = 0
        done = False

        async def limited() -> Any:
            nonlocal received, done
            if done:  # the body is in: what follows is the disconnect, which may take long
                return await receive()
            try:
                async with asyncio.timeout(self.idle_timeout):
                    message = await receive()
            except TimeoutError:
                raise RequestError(408, f"the request body stalled: no bytes for "
                                        f"{self.idle_timeout:g} s (--idle-timeout); send the "
                                        "whole body without pausing", close=True) from None
            if message["type"] != "http.request":
                done = True
                return message
            received += len(message.get("body", b""))
            done = not message.get("more_body", False)
            if received > self.max_body_bytes:
                if not done:
                    await _drain(receive, DRAIN_SECONDS)
                raise self.too_large(received if done else None)
            return message

        return limited


class Measured:
    """ASGI wrapper counting every HTTP request by route template and status, with latency."""

    def __init__(self, app: Any, repository: Repository) -> None:
        self.app = app
        self.metrics = repository.metrics
        self.repository = repository

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.requests.inc((endpoint, str(status)))
            self.metrics.latency.observe((endpoint,), time.perf_counter() - started)
