"""WebSocket /v1/realtime?intent=transcription: OpenAI's realtime transcription session.

The client streams base64 PCM16 (`input_audio_buffer.append`), and commits turns itself or lets server VAD
do it. While a turn grows, it is decoded again every `PASS_INTERVAL_S` on the shared engine; words two passes
agree on are sent as `conversation.item.input_audio_transcription.delta` and never change. On commit a final
pass over the whole turn sends the rest and `...completed`. Both event shapes are accepted: the GA
`session.update` and the beta `transcription_session.update`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from vllm_whisper.audio.live import LiveAudioBuffer, LiveAudioError, TurnDetector, decode_pcm16
from vllm_whisper.engine.async_engine import AsyncLLMEngine
from vllm_whisper.languages import normalize_language
from vllm_whisper.params import TranscriptionParams, fallback_temperatures
from vllm_whisper.transcribe.incremental import LocalAgreement
from vllm_whisper.transcribe.stream import TranscriptionFinished, stream_transcription

logger = logging.getLogger(__name__)
PASS_INTERVAL_S = 0.3  # new audio needed before another partial pass
MIN_PASS_AUDIO_S = 0.6  # no partial pass on less audio than this (the turn starts with 0.3 s of padding)
MAX_TURN_S = 29.0  # a longer turn is committed by the server (Whisper hears 30 s at a time)
IDLE_KEEP_S = 2.0  # audio kept while no one speaks (enough for the prefix padding)
DEFAULT_RATE = 24000  # OpenAI's pcm16 is 24 kHz mono
MAX_PENDING_FINALS = 4  # committed turns of one session decoding at once before its commits wait
PARTIAL_PASS_PRIORITY = 1  # engine priority of partial passes: after every request of priority 0


# What parsing a client's event can raise besides our own errors: wrong types (a string rate, a list where an object
# belongs), numbers out of range (int(1e400)), bad base64 or text encodings.
INVALID_VALUE_ERRORS = (ValueError, TypeError, OverflowError, AttributeError, KeyError, UnicodeError)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class RealtimeError(ValueError):
    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None):
        super().__init__(message)
        self.code, self.param = code, param


def _event_id() -> str:
    return f"event_{secrets.token_hex(8)}"


@dataclass
class SessionConfig:
    rate: int = DEFAULT_RATE
    language: str | None = None
    prompt: str | None = None
    model: str = "whisper-1"
    turn_detection: dict[str, Any] | None = field(default_factory=lambda: {
        "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500})

    def beta_view(self) -> dict:
        return {"object": "realtime.transcription_session", "input_audio_format": "pcm16",
                "input_audio_transcription": {"model": self.model, "language": self.language, "prompt": self.prompt},
                "turn_detection": self.turn_detection}

    def ga_view(self) -> dict:
        return {"type": "transcription", "object": "realtime.transcription_session", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": self.rate},
            "transcription": {"model": self.model, "language": self.language, "prompt": self.prompt},
            "turn_detection": self.turn_detection}}}


class RealtimeSession:
    """One WebSocket's state: the turn's audio, its item id, partial passes and the agreement of their text."""

    def __init__(self, websocket: WebSocket, engine: AsyncLLMEngine, served_names: list[str],
                 multilingual: bool):
        self.ws, self.engine = websocket, engine
        self.served_names, self.multilingual = served_names, multilingual
        self.config = SessionConfig(model=served_names[0])
        self.session_id = f"sess_{uuid.uuid4().hex[:20]}"
        self.audio = LiveAudioBuffer(self.config.rate)
        self.stream_seconds = 0.0  # audio received since the session (or the last clear), at 16 kHz
        self.turn_offset = 0.0  # where the buffer starts on that timeline
        self.detector = self._new_detector()
        self.buffer_origin = 0.0  # where the buffer starts on the detector's timeline
        self.item_id: str | None = None
        self.previous_item_id: str | None = None
        self.agreement = LocalAgreement()
        self.passes = 0
        self._pass_task: asyncio.Task | None = None
        self._last_pass_at = 0.0  # buffer seconds covered by the last partial pass
        self._send_lock = asyncio.Lock()
        self._finals: set[asyncio.Task] = set()

    # --- protocol -----------------------------------------------------------------------------------
    async def run(self) -> None:
        await self.send({"type": "transcription_session.created", "session": {"id": self.session_id,
                                                                             **self.config.beta_view()}})
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("text") is None:
                    await self.error("binary frames are not supported: send each event as a JSON text frame",
                                     "invalid_frame", None, None)
                    continue
                await self.handle(message["text"])
        except WebSocketDisconnect:
            pass
        finally:
            for task in [self._pass_task, *self._finals]:
                if task is not None:
                    task.cancel()

    async def close_for_shutdown(self) -> None:
        """The server drains: tell the client why, then close (1001: going away)."""
        await self.send({"type": "error", "error": {
            "type": "server_error", "code": "server_shutting_down", "param": None, "event_id": None,
            "message": "the server is shutting down; reconnect to another replica or later"}})
        try:
            await self.ws.close(code=1001, reason="server shutting down")
        except RuntimeError:
            pass  # already closed

    async def handle(self, message: str) -> None:
        client_event_id = None
        try:
            event = json.loads(message)
            if not isinstance(event, dict):
                raise RealtimeError("each message must be a JSON object", "invalid_json")
            client_event_id = event.get("event_id")
            kind = event.get("type")
            handler = {
                "input_audio_buffer.append": self.on_append,
                "input_audio_buffer.commit": self.on_commit,
                "input_audio_buffer.clear": self.on_clear,
                "session.update": self.on_session_update,
                "transcription_session.update": self.on_session_update,
            }.get(kind)
            if handler is None:
                raise RealtimeError(f"unknown event type {kind!r}", "unknown_event", "type")
            await handler(event)
        except (json.JSONDecodeError, RecursionError) as exc:
            await self.error(f"the message is not valid JSON: {_reason(exc)}", "invalid_json", None, None)
        except (RealtimeError, LiveAudioError) as exc:
            await self.error(str(exc), getattr(exc, "code", "invalid_value"), getattr(exc, "param", None),
                             client_event_id)
        except INVALID_VALUE_ERRORS as exc:  # a field of the wrong type or range inside an otherwise valid event
            await self.error(f"invalid value in the event: {_reason(exc)}", "invalid_value", None,
                             client_event_id if isinstance(client_event_id, str) else None)

    async def on_session_update(self, event: dict) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            raise RealtimeError("session.update needs a `session` object", param="session")
        ga = event["type"] == "session.update"
        self._apply(session, ga)
        kind = "session.updated" if ga else "transcription_session.updated"
        view = self.config.ga_view() if ga else self.config.beta_view()
        await self.send({"type": kind, "session": {"id": self.session_id, **view}})

    def _apply(self, session: dict, ga: bool) -> None:
        if ga:
            audio_input = (session.get("audio") or {}).get("input") or {}
            audio_format = audio_input.get("format") or {}
            transcription = audio_input.get("transcription") or {}
            turn = audio_input.get("turn_detection", self.config.turn_detection)
            if audio_format:
                if audio_format.get("type", "audio/pcm") != "audio/pcm":
                    raise RealtimeError("only audio/pcm (PCM16 mono) input is supported", param="audio.input.format")
                rate = int(audio_format.get("rate", DEFAULT_RATE))
            else:
                rate = self.config.rate
        else:
            fmt = session.get("input_audio_format", "pcm16")
            if fmt != "pcm16":
                raise RealtimeError("only pcm16 input is supported", param="input_audio_format")
            transcription = session.get("input_audio_transcription") or {}
            turn = session.get("turn_detection", self.config.turn_detection)
            rate = int(session.get("input_audio_sample_rate", self.config.rate))
        language = transcription.get("language")
        if language:
            try:
                language = normalize_language(language)
            except ValueError as exc:
                raise RealtimeError(str(exc), "invalid_language", "language") from exc
            if not self.multilingual and language != "en":
                raise RealtimeError("this English-only model only transcribes English", "unsupported_language",
                                    "language")
        model = transcription.get("model")
        if model and model not in self.served_names:
            raise RealtimeError(f"unknown model {model!r}; this server serves {', '.join(self.served_names)}",
                                "model_not_found", "model")
        if turn is not None and (not isinstance(turn, dict) or turn.get("type", "server_vad") != "server_vad"):
            raise RealtimeError("turn_detection must be null or {\"type\": \"server_vad\", ...}",
                                param="turn_detection")
        turn_detection = None if turn is None else _server_vad(turn)
        prompt = transcription.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise RealtimeError("prompt must be a string", param="prompt")
        if rate != self.config.rate:
            if self.audio.seconds:
                raise RealtimeError("change the sample rate before sending audio", param="rate")
            self.audio = LiveAudioBuffer(rate)  # raises for unsupported rates
        self.config.rate = rate
        self.config.language = language or None
        self.config.prompt = prompt or None
        self.config.model = model or self.config.model
        self.config.turn_detection = turn_detection
        self.detector = self._new_detector()

    async def on_append(self, event: dict) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise RealtimeError("input_audio_buffer.append needs base64 `audio`", param="audio")
        samples = decode_pcm16(audio)
        self.stream_seconds += samples.size / self.audio.rate
        await self._ingest(samples)

    async def _ingest(self, samples: np.ndarray) -> None:
        """Add client-rate audio to the turn, run server VAD over it and act on the turn boundaries it finds. Audio
        after a turn's end starts the next turn, so one append holding several turns gives one item per turn."""
        before = self.audio.samples_16k().size
        self.audio.append(samples)  # incremental: costs the chunk, not the turn
        new_16k = self.audio.samples_16k()[before:].copy()
        if self.detector is not None:
            detector = self.detector
            # The VAD model runs on a worker thread so many sessions cannot stall the event loop; this session's
            # events stay in order because its receive loop waits for each append.
            turns = await asyncio.to_thread(detector.feed, new_16k)
            for turn in turns if detector is self.detector else ():
                if turn.kind == "speech_started":
                    await self._speech_started(turn.at_seconds)
                    continue
                remainder = await self._speech_stopped(turn.at_seconds)
                if remainder is not None:
                    if remainder.size:
                        await self._ingest(remainder)  # a fresh detector looks for the next turn in it
                    return
        elif self.item_id is None and self.audio.seconds:
            self.item_id = f"item_{secrets.token_hex(10)}"
        if self.detector is not None and self.item_id is None and self.audio.seconds > IDLE_KEEP_S * 2:
            self._drop_buffer_before(self.buffer_origin + self.audio.seconds - IDLE_KEEP_S)  # silence
        if self.item_id is not None and self.audio.seconds >= MAX_TURN_S:
            await self.commit()
        self._maybe_start_pass()

    async def on_commit(self, event: dict) -> None:
        if self.audio.seconds < 0.1 or (self.detector is not None and self.item_id is None):
            raise RealtimeError("the input audio buffer holds no speech to commit", "input_audio_buffer_commit_empty")
        await self.commit()

    async def on_clear(self, event: dict) -> None:
        self._cancel_pass()
        self._start_new_turn()
        await self.send({"type": "input_audio_buffer.cleared"})

    # --- turns --------------------------------------------------------------------------------------
    def _start_new_turn(self) -> None:
        """Empty buffer, fresh VAD and agreement; the timelines restart at the audio received so far."""
        self.audio.clear()
        self.turn_offset = self.stream_seconds
        self.item_id, self.agreement, self._last_pass_at = None, LocalAgreement(), 0.0
        self.detector = self._new_detector()
        self.buffer_origin = 0.0

    async def _speech_started(self, at_seconds: float) -> None:
        # at_seconds is on the detector's timeline, which starts at the last clear / commit (turn_offset).
        self._drop_buffer_before(at_seconds)
        self.item_id = f"item_{secrets.token_hex(10)}"
        self.agreement, self._last_pass_at = LocalAgreement(), 0.0
        await self.send({"type": "input_audio_buffer.speech_started", "item_id": self.item_id,
                         "audio_start_ms": round((self.turn_offset + at_seconds) * 1000)})

    def _drop_buffer_before(self, detector_seconds: float) -> None:
        """Forget buffered audio before this time on the detector's timeline (silence before a turn)."""
        before = self.audio.seconds
        self.audio.drop_before(max(0.0, detector_seconds - self.buffer_origin))
        self.buffer_origin += before - self.audio.seconds

    async def _speech_stopped(self, at_seconds: float) -> np.ndarray | None:
        """Commit the turn up to where its end was detected; return the audio after that point (the start of what
        comes next), or None when no turn was open."""
        if self.item_id is None:
            return None
        await self.send({"type": "input_audio_buffer.speech_stopped", "item_id": self.item_id,
                         "audio_end_ms": round((self.turn_offset + at_seconds) * 1000)})
        detected_at = at_seconds + self.config.turn_detection["silence_duration_ms"] / 1000 - self.buffer_origin
        remainder = self.audio.audio_after(detected_at)
        await self.commit(until_seconds=detected_at)
        self.turn_offset -= remainder.size / self.audio.rate  # the next turn's timeline starts at the remainder
        return remainder

    async def commit(self, until_seconds: float | None = None) -> None:
        """Close the turn (its audio up to `until_seconds`, default all): announce the item, then decode it whole
        in the background and complete it."""
        item_id = self.item_id or f"item_{secrets.token_hex(10)}"
        audio = self.audio.samples_16k().copy()
        if until_seconds is not None:
            audio = audio[: max(0, int(round(until_seconds * 16000)))]
        agreement = self.agreement
        self._cancel_pass()
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id,
                         "previous_item_id": self.previous_item_id})
        await self.send({"type": "conversation.item.created", "previous_item_id": self.previous_item_id,
                         "item": {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
                                  "status": "completed",
                                  "content": [{"type": "input_audio", "transcript": None}]}})
        self.previous_item_id = item_id
        self._start_new_turn()
        task = asyncio.create_task(self._complete(item_id, audio, agreement))
        self._finals.add(task)
        task.add_done_callback(self._finals.discard)
        if len(self._finals) >= MAX_PENDING_FINALS:
            # Back-pressure: a client committing faster than turns decode waits here (its later events queue in
            # the socket) instead of growing the engine's queue without bound.
            await asyncio.wait(set(self._finals), return_when=asyncio.FIRST_COMPLETED)

    async def _complete(self, item_id: str, audio: np.ndarray, agreement: LocalAgreement) -> None:
        try:
            text = await self._decode(audio, final=True, tag=f"{item_id}-final", prefix=agreement.text)
        except Exception as exc:  # an engine failure ends this item with an error, not the session
            await self.error(f"transcription failed: {exc}", "transcription_failed", None, None)
            return
        delta = agreement.finish(text)
        if delta:
            await self._send_delta(item_id, delta)
        await self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                         "content_index": 0, "transcript": agreement.text})

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
        try:
            text = await self._decode(audio, final=False, tag=f"{item_id}-p{self.passes}",
                                      prefix=self.agreement.text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failed partial pass costs only that partial text
            logger.warning("partial pass failed: %s", exc)
            return
        if item_id != self.item_id:
            return
        delta = self.agreement.update(text)
        if delta:
            await self._send_delta(item_id, delta)
        self._maybe_start_pass()  # audio that arrived during this pass

    def _cancel_pass(self) -> None:
        if self._pass_task is not None and not self._pass_task.done():
            self._pass_task.cancel()
        self._pass_task = None

    async def _decode(self, audio: np.ndarray, final: bool, tag: str, prefix: str) -> str:
        """One decode of the turn so far, continuing after the words already sent (a forced prefix), so a
        pass only decodes new words and cannot contradict sent text."""
        self.passes += 1
        params = TranscriptionParams(
            language=self.config.language if self.multilingual else "en", timestamps=False,
            initial_prompt=self.config.prompt, condition_on_previous_text=False, prefix=prefix or None,
            temperature=fallback_temperatures(0.0) if final else (0.0,),
            max_new_tokens=self.engine.config.default_max_new_tokens)
        # Partial passes are best effort: they queue behind uploads and committed turns (priority 1), so many live
        # sessions cannot starve the server's other work; a turn's final pass has normal priority.
        priority = 0 if final else PARTIAL_PASS_PRIORITY
        request_id = f"rt-{self.session_id}-{tag}"
        async for event in stream_transcription(self.engine, audio, params, request_id, priority):
            if isinstance(event, TranscriptionFinished):
                return event.result.text
        return ""

    # --- sending ------------------------------------------------------------------------------------
    async def _send_delta(self, item_id: str, delta: str) -> None:
        await self.send({"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id,
                         "content_index": 0, "delta": delta})

    async def send(self, event: dict) -> None:
        async with self._send_lock:
            try:
                await self.ws.send_text(json.dumps({"event_id": _event_id(), **event}, ensure_ascii=False))
            except (WebSocketDisconnect, RuntimeError):
                pass  # the client left; the receive loop ends the session

    async def error(self, message: str, code: str, param: str | None, client_event_id: str | None) -> None:
        await self.send({"type": "error", "error": {"type": "invalid_request_error", "code": code,
                                                    "message": message, "param": param,
                                                    "event_id": client_event_id}})

    def _new_detector(self) -> TurnDetector | None:
        turn = self.config.turn_detection
        if turn is None:
            return None
        return TurnDetector(turn["threshold"], turn["prefix_padding_ms"], turn["silence_duration_ms"])


def _server_vad(turn: dict) -> dict:
    """Validated server_vad settings: a threshold in (0, 1), padding and silence from 0 to 10 s."""
    threshold = float(turn.get("threshold", 0.5))
    padding = int(turn.get("prefix_padding_ms", 300))
    silence = int(turn.get("silence_duration_ms", 500))
    if not 0.0 < threshold < 1.0:
        raise RealtimeError("turn_detection.threshold must be between 0 and 1", param="turn_detection.threshold")
    for name, value in (("prefix_padding_ms", padding), ("silence_duration_ms", silence)):
        if not 0 <= value <= 10_000:
            raise RealtimeError(f"turn_detection.{name} must be between 0 and 10000", param=f"turn_detection.{name}")
    return {"type": "server_vad", "threshold": threshold, "prefix_padding_ms": padding, "silence_duration_ms": silence}


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
