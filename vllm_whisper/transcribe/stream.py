"""Transcribe one file on the async engine as a stream of events: text deltas as tokens decode, each segment
the moment its closing timestamp is decoded, then the final result.

Each piece of the file (FileTranscription: the whole file, its VAD speech, or parallel chunks) keeps its
sequential seek loop; each window is one engine request, so many streams share engine steps. Deltas and early segments are provisional only in one case: when a window's output
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
from vllm_whisper.transcribe.file_plan import FileTranscription, Piece
from vllm_whisper.transcribe.sequential import JobResult


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


_PIECE_END = object()


async def stream_transcription(engine: AsyncLLMEngine, audio: np.ndarray, params: TranscriptionParams,
                               request_id: str) -> AsyncIterator[TranscriptionEvent]:
    """Events for one file, in time order; closing the iterator early aborts the windows in flight and frees
    their cache. Pieces of a parallel-chunked file decode concurrently; a later piece's events wait (buffered)
    until the earlier pieces have been sent."""
    file = await asyncio.to_thread(FileTranscription, engine.engine.loaded, audio, params, request_id)
    queues: list[asyncio.Queue] = [asyncio.Queue() for _ in file.pieces]
    language_ready = asyncio.Event()
    if file.language_known():
        language_ready.set()
    tokens = [0] * len(file.pieces)

    async def run(index: int) -> None:
        try:
            if index > 0:
                await language_ready.wait()
            tokens[index] = await _run_piece(engine, file, file.pieces[index], queues[index].put_nowait,
                                             language_ready)
            queues[index].put_nowait(_PIECE_END)
        except Exception as exc:  # surfaces in the consumer, in order
            queues[index].put_nowait(exc)

    tasks = [asyncio.create_task(run(i)) for i in range(len(file.pieces))]
    at_start = True
    try:
        for piece, queue in zip(file.pieces, queues):
            while (item := await queue.get()) is not _PIECE_END:
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, TextDelta):
                    text = item.text.lstrip() if at_start else item.text
                    if text:
                        at_start = False
                        yield TextDelta(text)
                else:
                    yield SegmentClosed(file.map_segment(piece, item.segment, file.next_segment_id()))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    yield TranscriptionFinished(file.result(), sum(tokens))


async def _run_piece(engine: AsyncLLMEngine, file: FileTranscription, piece: Piece, emit,
                     language_ready: asyncio.Event) -> int:
    """Drive one piece's seek loop on the engine, emitting deltas and piece-local segments; returns the
    number of tokens decoded."""
    machine = piece.machine
    tokens_generated = 0
    sent_segments = 0
    job = machine.next_job()
    held_window: str | None = None  # retained by this piece; released on every way out
    try:
        while job is not None:
            text = _WindowText(machine.loaded)
            final = None
            held_window = job.window_key
            outputs = engine.generate(job.job_id, job.features, job.prompt, job.params, job.audio_seconds,
                                      window_key=job.window_key, retain_window=True)
            async with aclosing(outputs):  # closing it at once aborts the request if we are cancelled mid-window
                async for out in outputs:
                    final = out
                    if job.kind != "transcribe" or not out.new_tokens:
                        continue
                    delta = text.delta(out.tokens)
                    if delta:
                        emit(TextDelta(delta))
                    for segment in machine.preview_segments(out.tokens)[sent_segments - len(machine.segments):]:
                        sent_segments += 1
                        emit(SegmentClosed(segment))
            tokens_generated += len(final.tokens)
            result = JobResult(final.tokens, final.sum_logprob, final.no_speech_prob, job.params.temperature,
                               engine.engine.window_cross_kv(job.window_key))  # held: the slot stays put
            await asyncio.to_thread(file.on_result, job, result)  # word alignment may run here
            if file.language_known():
                language_ready.set()
            next_job = machine.next_job()
            if next_job is None or next_job.window_key != job.window_key:
                engine.release_window(job.window_key)
                held_window = None
            job = next_job
            for segment in machine.segments[sent_segments:]:
                sent_segments += 1
                emit(SegmentClosed(segment))
    finally:
        if held_window is not None:
            engine.release_window(held_window)
    return tokens_generated
