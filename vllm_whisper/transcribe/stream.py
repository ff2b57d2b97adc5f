"""Transcribe one file on the async engine as a stream of events: text deltas as tokens decode, each segment
the moment its closing timestamp is decoded, then the final result.

The file keeps the sequential seek loop (LongFormTranscription); each window is one engine request, so many
streams share engine steps. Deltas and early segments are provisional only in one case: when a window's output
fails the fallback checks and is decoded again hotter, what was already sent for it stays sent (the final
event carries the authoritative result).
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator, Union

import numpy as np

from vllm_whisper.engine.async_engine import AsyncLLMEngine
from vllm_whisper.model_executor.loader import LoadedModel
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.transcribe.result import Segment, TranscriptionResult
from vllm_whisper.transcribe.sequential import JobResult, LongFormTranscription


@dataclass
class TextDelta:
    """New text since the previous delta (concatenated, the deltas give the transcript)."""

    text: str


@dataclass
class SegmentClosed:
    """A segment whose end timestamp has been decoded."""

    segment: Segment


@dataclass
class TranscriptionFinished:
    """The whole file is done."""

    result: TranscriptionResult
    generated_tokens: int


TranscriptionEvent = Union[TextDelta, SegmentClosed, TranscriptionFinished]


class _WindowText:
    """Incremental detokenisation of one window's output: text tokens only, holding back an incomplete
    UTF-8 character until its remaining bytes arrive."""

    def __init__(self, loaded: LoadedModel):
        self.tokenizer = loaded.tokenizer
        self.sent = ""

    def delta(self, tokens: list[int]) -> str:
        text = self.tokenizer.decode(tokens)
        if text.endswith("\ufffd") or len(text) <= len(self.sent):
            return ""
        new, self.sent = text[len(self.sent):], text
        return new


async def stream_transcription(engine: AsyncLLMEngine, audio: np.ndarray, params: TranscriptionParams,
                               request_id: str) -> AsyncIterator[TranscriptionEvent]:
    """Events for one file; closing the iterator early aborts the window in flight and frees its cache."""
    loaded = engine.engine.loaded
    machine = LongFormTranscription(loaded, audio, params, request_id)
    tokens_generated = 0
    sent_segments = 0
    at_start = True
    job = machine.next_job()
    held_window: str | None = None  # retained by this stream; released on every way out
    try:
        while job is not None:
            text = _WindowText(loaded)
            final = None
            held_window = job.window_key
            outputs = engine.generate(job.job_id, job.features, job.prompt, job.params, job.audio_seconds,
                                      window_key=job.window_key, retain_window=True)
            async with aclosing(outputs):  # closing it at once aborts the request if we are closed mid-window
                async for out in outputs:
                    final = out
                    if job.kind != "transcribe" or not out.new_tokens:
                        continue
                    delta = text.delta(out.tokens)
                    if at_start:
                        delta = delta.lstrip()
                    if delta:
                        at_start = False
                        yield TextDelta(delta)
                    for segment in machine.preview_segments(out.tokens)[sent_segments - len(machine.segments):]:
                        sent_segments += 1
                        yield SegmentClosed(segment)
            tokens_generated += len(final.tokens)
            result = JobResult(final.tokens, final.sum_logprob, final.no_speech_prob, job.params.temperature)
            await asyncio.to_thread(machine.on_result, job, result)  # word alignment may run here
            next_job = machine.next_job()
            if next_job is None or next_job.window_key != job.window_key:
                engine.release_window(job.window_key)
                held_window = None
            job = next_job
            for segment in machine.segments[sent_segments:]:
                sent_segments += 1
                yield SegmentClosed(segment)
    finally:
        if held_window is not None:
            engine.release_window(held_window)
    yield TranscriptionFinished(machine.result(), tokens_generated)
