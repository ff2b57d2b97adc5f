"""Runs inside Ray Serve's HTTP proxy: when a replica dies under a request (killed, out of memory, node lost),
the client gets a clean, retriable error instead of Serve's bare 500 or a cut connection.

- before the response started: 503 with `Retry-After` and OpenAI's error body (code `replica_unavailable`);
- an SSE stream already running: a final `error` event and `data: [DONE]`, as the server ends a failed stream;
- a realtime WebSocket: an `error` event, then close code 1012 (service restart: reconnect).

Serve loads it through `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=vllm_whisper.entrypoints.ray_serve.proxy_errors:
proxy_middlewares`, which must be set where the proxy runs (the local Ray `--ray` starts, the KubeRay pods).
"""

from __future__ import annotations

import json
import logging

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vllm_whisper.entrypoints.openai.errors import OpenAIError
from vllm_whisper.outputs.sse import DONE, encode_event

logger = logging.getLogger(__name__)

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "vllm_whisper.entrypoints.ray_serve.proxy_errors:proxy_middlewares"
RETRY_AFTER_S = 1
CLOSE_SERVICE_RESTART = 1012  # RFC 6455 registry: the server is restarting, reconnect
MESSAGE = "The replica serving this request stopped (it is being replaced); retry the request."


def replica_lost_error() -> OpenAIError:
    return OpenAIError(503, MESSAGE, "server_error", code="replica_unavailable", retry_after=RETRY_AFTER_S)


def proxy_middlewares() -> list[Middleware]:
    """Serve's proxy callback: the middlewares it wraps around its ASGI app."""
    return [Middleware(ReplicaLossMiddleware)]


class ReplicaLossMiddleware:
    """Watches what the proxy sent; if the proxied call ended without a complete answer and the client is still
    there, it finishes the answer with a retriable error."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = _Seen()
        await self.app(scope, seen.watch_receive(receive, "http.disconnect"), seen.watch_send(send))
        if seen.client_gone or seen.finished:
            return
        if not seen.started:
            logger.warning("%s %s: the replica stopped before answering; sent 503", scope.get("method"),
                           scope.get("path"))
            error = replica_lost_error()
            headers = [(b"content-type", b"application/json"),
                       *((k.lower().encode(), v.encode()) for k, v in error.headers().items())]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": json.dumps(error.body()).encode()})
        elif seen.event_stream:
            logger.warning("%s: the replica stopped mid-stream; sent an error event", scope.get("path"))
            error = replica_lost_error()
            ending = "" if seen.stream_done else encode_event({"type": "error", "error": error.body()["error"]}) + DONE
            await send({"type": "http.response.body", "body": ending.encode(), "more_body": False})
        # A plain response cut mid-body stays cut: the client sees a broken response, not a truncated 200.

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = _Seen()
        await self.app(scope, seen.watch_receive(receive, "websocket.disconnect"), seen.watch_send(send))
        if seen.client_gone or seen.finished:
            return
        error = replica_lost_error()
        try:
            if seen.started:
                logger.warning("%s: the replica stopped mid-session; closing with 1012", scope.get("path"))
                event = {"type": "error", "event_id": None, "error": {**error.body()["error"], "event_id": None}}
                await send({"type": "websocket.send", "text": json.dumps(event)})
                await send({"type": "websocket.close", "code": CLOSE_SERVICE_RESTART, "reason": "replica restarted"})
            elif "websocket.http.response" in scope.get("extensions", {}):
                headers = [(b"content-type", b"application/json"),
                           *((k.lower().encode(), v.encode()) for k, v in error.headers().items())]
                await send({"type": "websocket.http.response.start", "status": 503, "headers": headers})
                await send({"type": "websocket.http.response.body", "body": json.dumps(error.body()).encode()})
            else:
                await send({"type": "websocket.close", "code": 1013, "reason": "replica unavailable"})
        except (OSError, RuntimeError):  # the client went away meanwhile
            pass


class _Seen:
    """What went through one connection: response started / finished, stream type, client disconnect."""

    def __init__(self) -> None:
        self.started = False
        self.finished = False
        self.event_stream = False
        self.stream_done = False  # the last body chunk ended with the stream's [DONE]
        self.client_gone = False

    def watch_receive(self, receive: Receive, disconnect: str) -> Receive:
        async def watched() -> Message:
            message = await receive()
            if message["type"] == disconnect:
                self.client_gone = True
            return message

        return watched

    def watch_send(self, send: Send) -> Send:
        async def watched(message: Message) -> None:
            kind = message["type"]
            if kind in ("http.response.start", "websocket.accept"):
                self.started = True
                headers = dict(message.get("headers") or [])
                self.event_stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            elif kind == "http.response.body":
                self.finished = not message.get("more_body", False)
                self.stream_done = message.get("body", b"").endswith(DONE.encode())
            elif kind in ("websocket.close", "websocket.http.response.body"):
                self.finished = True
            await send(message)

        return watched
