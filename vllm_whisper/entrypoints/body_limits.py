"""Bounded request bodies: count the bytes of every HTTP body as it arrives (chunked uploads without a
Content-Length included) and stop reading once the limit is passed, and give up on a client that stops sending
mid-body. Starlette would otherwise spool a whole upload to disk before anyone could look at its size."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """More body bytes arrived than the server accepts; `received` is how many were read before stopping."""

    def __init__(self, received: int, limit: int):
        super().__init__(f"the request body passed {limit} bytes")
        self.received, self.limit = received, limit


class BodyReadTimeout(Exception):
    """The client sent nothing for `seconds` in the middle of its request body."""

    def __init__(self, seconds: float):
        super().__init__(f"no request body data for {seconds:g} s")
        self.seconds = seconds


class BodyLimitMiddleware:
    """Wrap `receive` so that reading a body raises BodyTooLarge past max_bytes and BodyReadTimeout when the next
    chunk takes longer than read_timeout seconds. Once the body is complete, receive is passed through untouched
    (the disconnect watcher of a running request waits on it for as long as the request runs)."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float | None):
        self.app, self.max_bytes, self.read_timeout = app, max_bytes, read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except asyncio.TimeoutError:
                raise BodyReadTimeout(self.read_timeout or 0.0) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(received, self.max_bytes)
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)
