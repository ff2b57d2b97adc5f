"""/v1/realtime speaks two protocols: OpenAI's transcription session (realtime.py) and vLLM's (realtime_vllm.py).

The rule: `?intent=transcription` is OpenAI's, exactly as before. Without `intent` the server greets with a
`session.created` both understand (vLLM's `id` and `created`, OpenAI's GA `session` object), and the client's first
frame decides: OpenAI's session configuration (`transcription_session.update`, or `session.update` carrying a
`session` object) picks OpenAI's protocol; anything else (vLLM's `session.update {model}`, a commit, an append,
or a bad frame) picks vLLM's, which handles that frame as its first event.
"""

from __future__ import annotations

import json

from starlette.websockets import WebSocket, WebSocketDisconnect

from vllm_whisper.engine.async_engine import AsyncLLMEngine
from vllm_whisper.entrypoints.openai.realtime import RealtimeSession
from vllm_whisper.entrypoints.openai.realtime_base import FINAL_PASS_BUDGET_S, RealtimeSessionBase, event_id
from vllm_whisper.entrypoints.openai.realtime_vllm import VllmRealtimeSession

OPENAI_INTENT = "transcription"


def opens_openai_session(message: dict) -> bool:
    """Whether a first frame is OpenAI's session configuration (see the module's rule)."""
    text = message.get("text")
    if text is None:
        return False
    try:
        event = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if not isinstance(event, dict):
        return False
    kind = event.get("type")
    return kind == "transcription_session.update" or (kind == "session.update" and
                                                      isinstance(event.get("session"), dict))


class RealtimeEndpoint:
    """One /v1/realtime socket: picks its protocol, then runs that protocol's session."""

    def __init__(self, websocket: WebSocket, intent: str | None, engine: AsyncLLMEngine, served_names: list[str],
                 multilingual: bool, turn_yield_s: float = FINAL_PASS_BUDGET_S):
        self.ws, self.intent, self.engine = websocket, intent, engine
        self.served_names, self.multilingual = served_names, multilingual
        self.turn_yield_s = turn_yield_s  # --realtime-turn-yield-seconds
        self.session: RealtimeSessionBase | None = None

    async def run(self) -> None:
        if self.intent == OPENAI_INTENT:
            self.session = RealtimeSession(self.ws, self.engine, self.served_names, self.multilingual,
                                           turn_yield_s=self.turn_yield_s)
            await self.session.run()
            return
        vllm = VllmRealtimeSession(self.ws, self.engine, self.served_names, self.multilingual,
                                   turn_yield_s=self.turn_yield_s)
        self.session = vllm  # until the first frame says otherwise (also what a shutdown meanwhile speaks)
        openai_created = RealtimeSession.ga_created_event(vllm.session_id, self.served_names[0])
        await vllm.send({"type": "session.created", "event_id": event_id(), **vllm.greeting(),
                         "session": openai_created["session"]})
        try:
            first = await self.ws.receive()
        except WebSocketDisconnect:
            return
        if first["type"] == "websocket.disconnect":
            return
        if opens_openai_session(first):
            self.session = RealtimeSession(self.ws, self.engine, self.served_names, self.multilingual,
                                           session_id=vllm.session_id, turn_yield_s=self.turn_yield_s)
        await self.session.run(first_message=first, greet=False)

    async def close_for_shutdown(self) -> None:
        """The server drains: the session tells its client why in its own protocol, then closes."""
        if self.session is not None:
            await self.session.close_for_shutdown()
            return
        try:
            await self.ws.close(code=1001, reason="server shutting down")
        except RuntimeError:
            pass  # not accepted yet or already closed
