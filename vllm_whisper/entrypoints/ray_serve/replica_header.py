"""Names the replica that answered: every HTTP response and WebSocket accept carries `x-vllm-whisper-replica`, so
clients, logs and tests can see which engine served them behind Serve's proxy."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REPLICA_HEADER = "x-vllm-whisper-replica"


class ReplicaHeaderMiddleware:
    """Pure ASGI middleware (streams pass through untouched) that adds the replica id header."""

    def __init__(self, app: ASGIApp, replica_id: str):
        self.app = app
        self.header = (REPLICA_HEADER.encode(), replica_id.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)
