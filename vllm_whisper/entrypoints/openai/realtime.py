"""WebSocket /v1/realtime?intent=transcription: OpenAI's realtime transcription session.

The client streams base64 PCM16 (`input_audio_buffer.append`), and commits turns itself or lets server VAD
do it. While a turn grows, it is decoded again every `PASS_INTERVAL_S` on the shared engine; words two passes
agree on are sent as `conversation.item.input_audio_transcription.delta` and never change. On commit a final
pass over the whole turn sends the rest and `...completed`. Both event shapes are accepted: the GA
`session.update` and the beta `transcription_session.update`. The socket loop, partial passes and decoding are
shared with vLLM's protocol (realtime_base.py); realtime_endpoint.py says which protocol a socket speaks.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.websockets import WebSocket

from vllm_whisper.audio.live import LiveAudioBuffer, TurnDetector, decode_pcm16
from vllm_whisper.engine.async_engine import AsyncLLMEngine
from vllm_whisper.entrypoints.openai.realtime_base import (
    FINAL_PASS_BUDGET_S, MAX_TURN_S, EventHandler, RealtimeError, RealtimeSessionBase, event_id)
from vllm_whisper.languages import normalize_language
from vllm_whisper.transcribe.incremental import LocalAgreement

IDLE_KEEP_S = 2.0  # audio kept while no one speaks (enough for the prefix padding)
DEFAULT_RATE = 24000  # OpenAI's pcm16 is 24 kHz mono
MAX_PENDING_FINALS = 4  # committed turns of one session decoding at once before its commits wait


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


class RealtimeSession(RealtimeSessionBase):
    """One WebSocket's state: the turn's audio, its item id, partial passes and the agreement of their text."""

    def __init__(self, websocket: WebSocket, engine: AsyncLLMEngine, served_names: list[str],
                 multilingual: bool, session_id: str | None = None, turn_yield_s: float = FINAL_PASS_BUDGET_S):
        super().__init__(websocket, engine, served_names, multilingual, DEFAULT_RATE, session_id, turn_yield_s)
        self.config = SessionConfig(model=served_names[0])
        self.stream_seconds = 0.0  # audio received since the session (or the last clear), at 16 kHz
        self.turn_offset = 0.0  # where the buffer starts on that timeline
        self.detector = self._new_detector()
        self.buffer_origin = 0.0  # where the buffer starts on the detector's timeline
        self.previous_item_id: str | None = None

    # --- protocol -----------------------------------------------------------------------------------
    def greeting(self) -> dict:
        return {"type": "transcription_session.created", "session": {"id": self.session_id,
                                                                     **self.config.beta_view()}}

    @staticmethod
    def ga_created_event(session_id: str, model: str) -> dict:
        """GA's `session.created` for a session with default settings (sent where the protocol is not yet known)."""
        return {"type": "session.created", "session": {"id": session_id, **SessionConfig(model=model).ga_view()}}

    def handlers(self) -> dict[str, EventHandler]:
        return {
            "input_audio_buffer.append": self.on_append,
            "input_audio_buffer.commit": self.on_commit,
            "input_audio_buffer.clear": self.on_clear,
            "session.update": self.on_session_update,
            "transcription_session.update": self.on_session_update,
        }

    def transcription_language(self) -> str | None:
        return self.config.language

    def transcription_prompt(self) -> str | None:
        return self.config.prompt

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
        detector = self.detector
        # Resampling and the VAD model run on a worker thread so many sessions cannot stall the event loop; this
        # session's events stay in order because its receive loop waits for each append, and nothing else touches
        # the buffer meanwhile (partial passes work on copies).
        turns = await asyncio.to_thread(self._append_and_detect, samples, detector)
        if detector is not None:
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

    def _append_and_detect(self, samples: np.ndarray, detector: TurnDetector | None) -> list:
        """Add the chunk to the turn (incremental resampling: costs the chunk, not the turn) and feed the new 16 kHz
        audio to the server VAD, if on; returns the turn boundaries found."""
        before = self.audio.samples_16k().size
        self.audio.append(samples)
        if detector is None:
            return []
        return detector.feed(self.audio.samples_16k()[before:].copy())

    async def on_commit(self, event: dict) -> None:
        if self.audio.seconds < 0.1 or (self.detector is not None and self.item_id is None):
            raise RealtimeError("the input audio buffer holds no speech to commit", "input_audio_buffer_commit_empty")
        await self.commit()

    async def on_clear(self, event: dict) -> None:
        await self._stop_pass()
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
        await self._stop_pass()  # a pass that already has its text sends it first: the final pass continues after it
        audio = self.audio.samples_16k().copy()
        if until_seconds is not None:
            audio = audio[: max(0, int(round(until_seconds * 16000)))]
        agreement = self.agreement
        await self.send({"type": "input_audio_buffer.committed", "item_id": item_id,
                         "previous_item_id": self.previous_item_id})
        await self.send({"type": "conversation.item.created", "previous_item_id": self.previous_item_id,
                         "item": {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
                                  "status": "completed",
                                  "content": [{"type": "input_audio", "transcript": None}]}})
        self.previous_item_id = item_id
        self._start_new_turn()
        self._track(asyncio.create_task(self._complete(item_id, audio, agreement)))
        if len(self._tasks) >= MAX_PENDING_FINALS:
            # Back-pressure: a client committing faster than turns decode waits here (its later events queue in
            # the socket) instead of growing the engine's queue without bound.
            await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)

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

    # --- sending ------------------------------------------------------------------------------------
    async def _send_delta(self, item_id: str, delta: str) -> None:
        await self.send({"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id,
                         "content_index": 0, "delta": delta})

    async def send(self, event: dict) -> None:
        await super().send({"event_id": event_id(), **event})

    def error_event(self, message: str, code: str, param: str | None, client_event_id: Any,
                    error_type: str = "invalid_request_error") -> dict:
        return {"type": "error", "error": {"type": error_type, "code": code, "message": message, "param": param,
                                           "event_id": client_event_id}}

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
