"""Counts every HTTP response and WebSocket handshake by route template and status code
(`vllm_whisper:http_responses_total{route, status}`), as a pure ASGI middleware so streams and sockets are seen too.

The route label is the matched route's template (`/v1/models/{model_id:path}`), never the raw path, so label
cardinality stays bounded; paths no route matches are `unmatched`. A response is counted when it has been sent in
full (a stream at its end); its status is the one the client received: 500 when the app raised before answering.
A WebSocket counts 101 when accepted, the denial response's status when refused with one, and 403 when closed
before accepting (what the server then answers the handshake with).
"""

from __future__ import annotations

from typing import Sequence

from prometheus_client import Counter
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "unmatched"


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The template of the route that serves this scope (a method mismatch still names its route)."""
    partial = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "path", UNMATCHED)
        if match is Match.PARTIAL and partial is None:
            partial = getattr(route, "path", UNMATCHED)
    return partial or UNMATCHED


class HTTPResponseCounter:
    """ASGI middleware: one count per response or WebSocket handshake, labelled (route, status)."""

    def __init__(self, app: ASGIApp, counter: Counter, routes: Sequence[BaseRoute]):
        self.app = app
        self.counter = counter
        self.routes = routes  # the app's route list (routes added later are seen too)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        status: str | None = None

        async def send_and_note(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if status is None:
                if kind in ("http.response.start", "websocket.http.response.start"):
                    status = str(message["status"])
                elif kind == "websocket.accept":
                    status = "101"
                elif kind == "websocket.close":
                    status = "403"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            status = status or "500"
            raise
        finally:
            default = "500" if scope["type"] == "http" else "403"
            self.counter.labels(route_template(self.routes, scope), status or default).inc()
