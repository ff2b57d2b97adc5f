"""WebSocket /v1/realtime without `intent`: vLLM's realtime speech-to-text protocol (vllm/entrypoints/.../realtime).

Events as vLLM names them. Server: `session.created {id, created}` on connect, `transcription.delta {delta}`,
`transcription.done {text, usage}`, `error {error, code}`. Client: `session.update {model}` (a served model;
nothing is sent back, a wrong one gets `model_not_found`; `language` and `prompt` are optional),
`input_audio_buffer.append {audio}` (base64 PCM16, 16 kHz mono), `input_audio_buffer.commit {final}`.

As in vLLM, a commit needs a validated model (else `model_not_validated`); `final: false` (or absent) starts the
utterance, whose deltas then flow while audio arrives (audio appended before it belongs to it), and a second one
while it runs changes nothing; `final: true` ends the audio: the rest of the text and `transcription.done` follow,
and the next commit starts a new utterance. A final commit with no audio at all is an error
(`input_audio_buffer_commit_empty`). Deltas come from the shared partial passes (realtime_base.py). An utterance
may be longer than Whisper's 30 s: every `MAX_TURN_S` its audio is cut at the quietest point of the last seconds,
that piece is finished, and the next piece is decoded with the text before it as the prompt.
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Any

import numpy as np
from starlette.websockets import WebSocket

from vllm_whisper.audio.chunking import quietest_point
from vllm_whisper.audio.decode import SAMPLE_RATE
from vllm_whisper.audio.live import decode_pcm16
from vllm_whisper.engine.async_engine import AsyncLLMEngine
from vllm_whisper.entrypoints.openai.realtime_base import (
    FINAL_PASS_BUDGET_S, MAX_TURN_S, EventHandler, RealtimeError, RealtimeSessionBase, reason)
from vllm_whisper.languages import normalize_language
from vllm_whisper.outputs.sse import AUDIO_TOKENS_PER_SECOND
from vllm_whisper.transcribe.incremental import LocalAgreement

CUT_SEARCH_S = 5.0  # a piece of a long utterance ends at the quietest point of its last seconds
MAX_PENDING_AUDIO_S = MAX_TURN_S  # audio kept before an utterance starts (beyond it, appends are refused)


class VllmRealtimeSession(RealtimeSessionBase):
    """One WebSocket speaking vLLM's protocol: the open utterance's current piece, its text so far, the model."""

    VALUE_ERROR_CODE = "invalid_event"
    AUDIO_ERROR_CODE = "invalid_audio"

    def __init__(self, websocket: WebSocket, engine: AsyncLLMEngine, served_names: list[str], multilingual: bool,
                 session_id: str | None = None, turn_yield_s: float = FINAL_PASS_BUDGET_S):
        super().__init__(websocket, engine, served_names, multilingual, SAMPLE_RATE, session_id, turn_yield_s)
        self.model: str | None = None  # set by a valid session.update; commits need it
        self.language: str | None = None
        self.prompt: str | None = None
        self.utterance_open = False  # between a commit and the final commit
        self.text = ""  # the open utterance's text sent so far (the deltas joined)
        self.utterance_seconds = 0.0  # its audio received so far
        self.context: str | None = None  # text of the utterance's previous piece: the prompt of the current one

    # --- protocol -----------------------------------------------------------------------------------
    def greeting(self) -> dict:
        return {"type": "session.created", "id": self.session_id, "created": int(time.time())}

    def handlers(self) -> dict[str, EventHandler]:
        return {"session.update": self.on_session_update, "input_audio_buffer.append": self.on_append,
                "input_audio_buffer.commit": self.on_commit}

    def error_event(self, message: str, code: str, param: str | None, client_event_id: Any,
                    error_type: str = "invalid_request_error") -> dict:
        return {"type": "error", "error": message, "code": code}

    def transcription_language(self) -> str | None:
        return self.language

    def transcription_prompt(self) -> str | None:
        return self.context or self.prompt

    async def on_session_update(self, event: dict) -> None:
        if isinstance(event.get("session"), dict):
            raise RealtimeError("this socket speaks vLLM's realtime protocol (`session.update` with a top-level "
                                "`model`); for OpenAI's session events connect with ?intent=transcription",
                                "invalid_event", "session")
        model = event.get("model")
        if model is None:
            raise RealtimeError("session.update needs the `model` to transcribe with", "invalid_event", "model")
        if not isinstance(model, str) or model not in self.served_names:
            raise RealtimeError(f"The model `{model}` does not exist; this server serves "
                                f"{', '.join(self.served_names)}", "model_not_found", "model")
        language = event.get("language")
        if language is not None:
            try:
                language = normalize_language(language)
            except (ValueError, TypeError, AttributeError) as exc:
                raise RealtimeError(reason(exc), "invalid_language", "language") from exc
            if not self.multilingual and language != "en":
                raise RealtimeError("this English-only model only transcribes English", "unsupported_language",
                                    "language")
        prompt = event.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise RealtimeError("prompt must be a string", "invalid_event", "prompt")
        self.model, self.language, self.prompt = model, language or None, prompt or None

    async def on_append(self, event: dict) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise RealtimeError("input_audio_buffer.append needs `audio`: base64 PCM16 at 16 kHz", "invalid_audio",
                                "audio")
        samples = decode_pcm16(audio)
        if samples.size == 0:
            raise RealtimeError("the audio chunk is empty", "invalid_audio", "audio")
        if not self.utterance_open and self.audio.seconds + samples.size / SAMPLE_RATE > MAX_PENDING_AUDIO_S:
            raise RealtimeError(f"more than {MAX_PENDING_AUDIO_S:.0f} s of audio before any commit: send "
                                "input_audio_buffer.commit to start transcribing it", "input_audio_buffer_full",
                                "audio")
        self.audio.append(samples)
        self.utterance_seconds += samples.size / SAMPLE_RATE
        if self.utterance_open:
            await self._advance()

    async def on_commit(self, event: dict) -> None:
        final = event.get("final", False)
        if not isinstance(final, bool):
            raise RealtimeError("`final` must be true or false", "invalid_event", "final")
        if self.model is None:
            raise RealtimeError("Model not validated: send session.update with a served model before committing",
                                "model_not_validated")
        if not final:
            if not self.utterance_open:  # as in vLLM, a commit while the utterance runs changes nothing
                self.utterance_open = True
                self._start_piece()
                await self._advance()
            return
        if not self.text and self.audio.seconds == 0:
            self._reset_utterance()
            raise RealtimeError("there is no audio to transcribe: send input_audio_buffer.append first",
                                "input_audio_buffer_commit_empty")
        await self._finish()

    # --- utterances ---------------------------------------------------------------------------------
    def _start_piece(self) -> None:
        """A fresh id and agreement for the next piece of the utterance (partial passes follow `item_id`)."""
        self.item_id = f"piece_{secrets.token_hex(8)}"
        self.agreement, self._last_pass_at = LocalAgreement(), 0.0

    async def _advance(self) -> None:
        """New audio in the open utterance: finish the pieces it completes, then let a partial pass run."""
        if await self._finish_full_pieces():
            self._maybe_start_pass()

    async def _finish_full_pieces(self) -> bool:
        """Finish pieces while the audio is too long for one window; False when decoding failed."""
        while self.audio.seconds >= MAX_TURN_S:
            samples = self.audio.samples_16k()
            limit = int(MAX_TURN_S * SAMPLE_RATE)
            cut = quietest_point(samples, limit - int(CUT_SEARCH_S * SAMPLE_RATE), limit)
            piece, rest = samples[:cut].copy(), samples[cut:].copy()
            if not await self._finish_piece(piece):
                return False
            self.audio.clear()
            self.audio.append(rest)
            self._start_piece()
        return True

    async def _finish_piece(self, audio: np.ndarray) -> bool:
        """The final pass over one piece: send what it adds to the agreed words; False (and an error event, the
        utterance dropped) when decoding fails."""
        await self._stop_pass()  # a pass that already has its text sends it first: the final pass continues after it
        item_id = self.item_id or ""
        try:
            text = await self._decode(audio, final=True, tag=f"{item_id}-final", prefix=self.agreement.text)
        except Exception as exc:  # an engine failure ends this utterance with an error, not the session
            self._reset_utterance()
            await self.error(f"transcription failed: {reason(exc)}", "processing_error")
            return False
        await self._send_delta(item_id, self.agreement.finish(text))
        self.context = self.agreement.text or self.context
        return True

    async def _finish(self) -> None:
        """End of audio: finish the last piece and send `transcription.done`; the next commit starts afresh."""
        if not self.utterance_open:  # final commit over audio appended without a start: one utterance all the same
            self.utterance_open = True
            self._start_piece()
        if not await self._finish_full_pieces():
            return  # decoding failed (the error event is sent)
        if self.audio.seconds and not await self._finish_piece(self.audio.samples_16k().copy()):
            return
        text, seconds = self.text, self.utterance_seconds
        self._reset_utterance()
        await self.send({"type": "transcription.done", "text": text, "usage": self._usage(text, seconds)})

    def _reset_utterance(self) -> None:
        self._cancel_pass_task()
        self.audio.clear()
        self.item_id, self.agreement, self._last_pass_at = None, LocalAgreement(), 0.0
        self.utterance_open, self.text, self.utterance_seconds, self.context = False, "", 0.0, None

    def _cancel_pass_task(self) -> None:
        if self._pass_task is not None and not self._pass_task.done():
            self._pass_task.cancel()
        self._pass_task = None

    def _usage(self, text: str, seconds: float) -> dict:
        """vLLM's usage block: prompt tokens are the encoder frames the audio fills (50 a second), completion
        tokens the text's tokens."""
        prompt_tokens = math.ceil(round(seconds * AUDIO_TOKENS_PER_SECOND, 6))
        completion_tokens = len(self.engine.loaded.tokenizer.encode(" " + text)) if text else 0
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    # --- sending ------------------------------------------------------------------------------------
    async def _send_delta(self, item_id: str, delta: str) -> None:
        if not delta:
            return
        if self.text and not delta.startswith(" "):
            delta = " " + delta  # the first words of a later piece
        self.text += delta
        await self.send({"type": "transcription.delta", "delta": delta})
