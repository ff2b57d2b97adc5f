"""What both realtime protocols on /v1/realtime share (OpenAI's in realtime.py, vLLM's in realtime_vllm.py).

The socket loop (binary frames, bad JSON and bad values become `error` events, never a dropped socket), sending,
the close on server shutdown, and partial passes: while an utterance grows, its audio is decoded again every
`PASS_INTERVAL_S` at best-effort engine priority, continuing after the words already sent (a forced prefix), and
words two passes agree on (LocalAgreement) are sent once and never change.

Engine priorities: uploads 0; a committed turn's final pass 1 (it yields to uploads, but only for
`--realtime-turn-yield-seconds`, default FINAL_PASS_BUDGET_S, after which it counts as 0 and goes ahead of later
uploads); partial passes 2 (pure best effort).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from abc import ABC, abstractmethod
from contextlib import nullcontext
from typing import Any, Awaitable, Callable

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from vllm_whisper.audio.live import LiveAudioBuffer, LiveAudioError
from vllm_whisper.engine.async_engine import AsyncLLMEngine
from vllm_whisper.entrypoints.request_log import RequestRecord, logged
from vllm_whisper.params import TranscriptionParams, fallback_temperatures
from vllm_whisper.transcribe.incremental import LocalAgreement
from vllm_whisper.transcribe.stream import TranscriptionFinished, stream_transcription

logger = logging.getLogger(__name__)
PASS_INTERVAL_S = 0.3  # new audio needed before another partial pass
MIN_PASS_AUDIO_S = 0.6  # no partial pass on less audio than this
MAX_TURN_S = 29.0  # audio decoded as one piece at most (Whisper hears 30 s at a time)
FINAL_PASS_PRIORITY = 1  # engine priority of a committed turn's final pass: after uploads (priority 0) ...
FINAL_PASS_BUDGET_S = 15.0  # ... for at most this long by default; then it is urgent (priority 0), so uploads cannot
# starve turns (benchmarks/benchmark_realtime_load.py measured it)
PARTIAL_PASS_PRIORITY = 2  # engine priority of partial passes: after uploads and committed turns

# What parsing a client's event can raise besides our own errors: wrong types (a string rate, a list where an object
# belongs), numbers out of range (int(1e400)), bad base64 or text encodings.
INVALID_VALUE_ERRORS = (ValueError, TypeError, OverflowError, AttributeError, KeyError, UnicodeError)

EventHandler = Callable[[dict], Awaitable[None]]


def reason(exc: BaseException) -> str:
    """The first line of an exception's message (or its type), short enough for an error event."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class RealtimeError(ValueError):
    """A client event the session cannot act on; becomes an `error` event with this code."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None):
        super().__init__(message)
        self.code, self.param = code, param


def event_id() -> str:
    return f"event_{secrets.token_hex(8)}"


def new_session_id() -> str:
    return f"sess_{uuid.uuid4().hex[:20]}"


class RealtimeSessionBase(ABC):
    """One WebSocket's session: the socket loop, partial passes over `audio` while `item_id` is open, decoding."""

    VALUE_ERROR_CODE = "invalid_value"  # error code for a field of the wrong type or range
    AUDIO_ERROR_CODE = "invalid_value"  # error code for audio that is not base64 PCM16

    def __init__(self, websocket: WebSocket, engine: AsyncLLMEngine, served_names: list[str], multilingual: bool,
                 rate: int, session_id: str | None = None, turn_yield_s: float = FINAL_PASS_BUDGET_S):
        if turn_yield_s < 0:
            raise ValueError(f"turn_yield_s must be 0 or more seconds, got {turn_yield_s}")
        self.ws, self.engine = websocket, engine
        self.turn_yield_s = turn_yield_s  # how long a committed turn's final pass lets uploads go first
        self.served_names, self.multilingual = served_names, multilingual
        self.session_id = session_id or new_session_id()
        self.audio = LiveAudioBuffer(rate)
        self.item_id: str | None = None  # what partial passes transcribe now; None: no pass runs
        self.agreement = LocalAgreement()
        self.passes = 0
        self._pass_task: asyncio.Task | None = None
        self._pass_decoding = False  # the pass task waits on the engine (not yet applying its result)
        self._last_pass_at = 0.0  # buffer seconds covered by the last partial pass
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()  # background work that ends with the session

    # --- what each protocol defines -----------------------------------------------------------------
    @abstractmethod
    def greeting(self) -> dict:
        """The event sent on connect."""

    @abstractmethod
    def handlers(self) -> dict[str, EventHandler]:
        """Client event type -> handler."""

    @abstractmethod
    def error_event(self, message: str, code: str, param: str | None, client_event_id: Any,
                    error_type: str = "invalid_request_error") -> dict:
        """This protocol's `error` event."""

    @abstractmethod
    async def _send_delta(self, item_id: str, delta: str) -> None:
        """Send newly agreed text of `item_id`."""

    @abstractmethod
    def transcription_language(self) -> str | None:
        """Language to decode in (None: detect)."""

    @abstractmethod
    def transcription_prompt(self) -> str | None:
        """Text that conditions the decode (spellings, or the words before this audio)."""

    # --- the socket ---------------------------------------------------------------------------------
    async def run(self, first_message: dict | None = None, greet: bool = True) -> None:
        """Serve the socket until the client leaves; `first_message` is a frame already received for us."""
        if greet:
            await self.send(self.greeting())
        try:
            message = first_message
            while True:
                if message is None:
                    message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is None:
                    await self.error("binary frames are not supported: send each event as a JSON text frame",
                                     "invalid_frame")
                else:
                    await self.handle(message["text"])
                message = None
        except WebSocketDisconnect:
            pass
        finally:
            for task in [self._pass_task, *self._tasks]:
                if task is not None:
                    task.cancel()

    async def handle(self, message: str) -> None:
        """Parse one text frame and run its handler; every failure becomes an error event."""
        client_event_id = None
        try:
            event = json.loads(message)
            if not isinstance(event, dict):
                raise RealtimeError("each message must be a JSON object", "invalid_json")
            client_event_id = event.get("event_id")
            kind = event.get("type")
            handler = self.handlers().get(kind)
            if handler is None:
                raise RealtimeError(f"unknown event type {kind!r}", "unknown_event", "type")
            await handler(event)
        except (json.JSONDecodeError, RecursionError) as exc:
            await self.error(f"the message is not valid JSON: {reason(exc)}", "invalid_json")
        except RealtimeError as exc:
            await self.error(str(exc), exc.code, exc.param, client_event_id)
        except LiveAudioError as exc:
            await self.error(str(exc), self.AUDIO_ERROR_CODE, None, client_event_id)
        except INVALID_VALUE_ERRORS as exc:  # a field of the wrong type or range inside an otherwise valid event
            await self.error(f"invalid value in the event: {reason(exc)}", self.VALUE_ERROR_CODE, None,
                             client_event_id if isinstance(client_event_id, str) else None)

    async def close_for_shutdown(self) -> None:
        """The server drains: tell the client why, then close (1001: going away)."""
        await self.send(self.error_event("the server is shutting down; reconnect to another replica or later",
                                         "server_shutting_down", None, None, error_type="server_error"))
        try:
            await self.ws.close(code=1001, reason="server shutting down")
        except RuntimeError:
            pass  # already closed

    async def send(self, event: dict) -> None:
        async with self._send_lock:
            try:
                await self.ws.send_text(json.dumps(event, ensure_ascii=False))
            except (WebSocketDisconnect, RuntimeError):
                pass  # the client left; the receive loop ends the session

    async def error(self, message: str, code: str, param: str | None = None, client_event_id: Any = None) -> None:
        await self.send(self.error_event(message, code, param, client_event_id))

    # --- partial passes -----------------------------------------------------------------------------
    def _maybe_start_pass(self) -> None:
        if self.item_id is None or (self._pass_task is not None and not self._pass_task.done()):
            return
        seconds = self.audio.seconds
        if seconds < MIN_PASS_AUDIO_S or seconds - self._last_pass_at < PASS_INTERVAL_S:
            return
        self._last_pass_at = seconds
        self._pass_task = asyncio.create_task(self._partial_pass(self.item_id, self.audio.samples_16k().copy()))

    async def _partial_pass(self, item_id: str, audio: np.ndarray) -> None:
        self._pass_decoding = True
        try:
            text = await self._decode(audio, final=False, tag=f"{item_id}-p{self.passes}",
                                      prefix=self.agreement.text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed partial pass costs only that partial text
            logger.warning("partial pass failed: %s", exc)
            return
        finally:
            self._pass_decoding = False
        if item_id != self.item_id:
            return
        delta = self.agreement.update(text)
        if delta:
            await self._send_delta(item_id, delta)
        if self._pass_task is asyncio.current_task():
            self._maybe_start_pass()  # audio that arrived during this pass (unless the pass was stopped meanwhile)

    async def _stop_pass(self) -> None:
        """End the running partial pass before the audio it covers is finished: cancel it while it decodes; once it
        has its text, let it send that text, so the agreement never holds words the client was not sent."""
        task, self._pass_task = self._pass_task, None
        if task is None or task.done():
            return
        if self._pass_decoding:
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # we were cancelled ourselves

    def _track(self, task: asyncio.Task) -> None:
        """Keep a background task until it ends; the session cancels what is left when it closes."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _decode(self, audio: np.ndarray, final: bool, tag: str, prefix: str) -> str:
        """One decode of the audio so far, continuing after the words already sent (a forced prefix), so a pass
        only decodes new words and cannot contradict sent text."""
        self.passes += 1
        params = TranscriptionParams(
            language=self.transcription_language() if self.multilingual else "en", timestamps=False,
            initial_prompt=self.transcription_prompt(), condition_on_previous_text=False, prefix=prefix or None,
            temperature=fallback_temperatures(0.0) if final else (0.0,),
            max_new_tokens=self.engine.config.default_max_new_tokens)
        # Partial passes are best effort: they queue behind uploads and committed turns, so many live sessions
        # cannot starve the server's other work. A committed turn's final pass yields to uploads within its budget:
        # on a saturated CPU every upload would otherwise share its steps with the encoder passes of many turns.
        priority, budget = (FINAL_PASS_PRIORITY, self.turn_yield_s) if final else (PARTIAL_PASS_PRIORITY, None)
        request_id = f"rt-{self.session_id}-{tag}"
        turn = RequestRecord(request_id, self.served_names[0], "realtime", audio_seconds=audio.size / 16000,
                             streamed=True)
        with logged(turn) if final else nullcontext():  # a turn's final pass is its request-log line
            async for event in stream_transcription(self.engine, audio, params, request_id, priority, budget):
                if isinstance(event, TranscriptionFinished):
                    return event.result.text
            return ""


def check_websocket_key(websocket: WebSocket, api_key: str | None) -> bool:
    """The key from `Authorization: Bearer` or, for browsers, the `openai-insecure-api-key.<key>` subprotocol."""
    if not api_key:
        return True
    header = websocket.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else ""
    for protocol in websocket.headers.get("sec-websocket-protocol", "").split(","):
        protocol = protocol.strip()
        if protocol.startswith("openai-insecure-api-key."):
            token = protocol[len("openai-insecure-api-key."):]
    return secrets.compare_digest(token.encode(), api_key.encode())
