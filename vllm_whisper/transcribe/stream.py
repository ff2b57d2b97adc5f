"""Transcribe one file on the async engine as a stream of events: text deltas as tokens decode, each segment
the moment its closing timestamp is decoded, then the final result.

Each piece of the file (FileTranscription: the whole file, its VAD speech, or parallel chunks) keeps its
sequential seek loop; each window job is one engine request (driven by transcribe/driver.py, as the offline
batch is), so many streams share engine steps. Deltas and early segments are provisional only in one case:
when a window's output fails the fallback checks and is decoded again hotter, what was already sent for it
stays sent (the final event carries the authoritative result).
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Union

import numpy as np

from vllm_whisper.engine.async_engine import AsyncLLMEngine
from vllm_whisper.engine.request import RequestOutput
from vllm_whisper.model_executor.loader import LoadedModel
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.transcribe.driver import FileDriver
from vllm_whisper.transcribe.result import Segment, TranscriptionResult
from vllm_whisper.transcribe.file_plan import FileTranscription, Piece
from vllm_whisper.transcribe.sequential import WindowJob


@dataclass
class TextDelta:
    """New text since the previous delta (concatenated, the deltas give the transcript), and how many tokens
    were decoded for it since the previous delta (what streamed usage counts so far)."""

    text: str
    tokens: int = 0


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


class _TaskJobs:
    """Jobs onto the async engine: each runs as a task that consumes its request's outputs (run_job)."""

    def __init__(self, engine: AsyncLLMEngine, run_job: Callable[[WindowJob], Awaitable[None]], priority: int,
                 urgent_after: float | None):
        self.engine = engine
        self.run_job = run_job
        self.priority = priority
        self.urgent_after = urgent_after
        self.tasks: set[asyncio.Task] = set()

    def submit(self, job: WindowJob) -> None:
        task = asyncio.create_task(self.run_job(job))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def outputs(self, job: WindowJob) -> AsyncIterator[RequestOutput]:
        """The job's engine request, its window retained."""
        if job.alignment is not None:
            return self.engine.align(job.job_id, job.features, job.prompt, job.alignment,
                                     window_key=job.window_key, retain_window=True)
        return self.engine.generate(job.job_id, job.features, job.prompt, job.params, job.audio_seconds,
                                    window_key=job.window_key, retain_window=True, priority=self.priority,
                                    urgent_after=self.urgent_after, full_audio_context=job.full_audio_context)

    def release_window(self, window_key: str) -> None:
        self.engine.release_window(window_key)

    def abort(self, job_id: str) -> None:
        self.engine.abort(job_id)

    def cancel_all(self) -> list[asyncio.Task]:
        """Cancel every job's task (each closes its request's outputs, which aborts it); returns them to await."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        return tasks


async def stream_transcription(engine: AsyncLLMEngine, audio: np.ndarray, params: TranscriptionParams,
                               request_id: str, priority: int = 0, urgent_after: float | None = None
                               ) -> AsyncIterator[TranscriptionEvent]:
    """Events for one file, in time order; closing the iterator early aborts the windows in flight and frees
    their cache. Pieces of a parallel-chunked file decode concurrently; a later piece's events wait (buffered)
    until the earlier pieces have been sent. `priority` orders the file's windows in the engine's queue (lower
    first; realtime turns use 1, their partial passes 2) and `urgent_after` is a deferred window's latency budget
    (LLMEngine.add_request)."""
    file = await asyncio.to_thread(FileTranscription, engine.loaded, audio, params, request_id)
    pieces = [_PieceEvents(file, piece) for piece in file.pieces]
    by_machine = {id(p.piece.machine): p for p in pieces}

    async def run_job(job: WindowJob) -> None:
        events = by_machine[id(file.piece_of(job).machine)]
        try:
            await events.run_job(job, jobs.outputs(job), driver)
            for piece_events in pieces:
                piece_events.end_if_done(driver)
        except Exception as exc:  # surfaces in the consumer, in order
            events.queue.put_nowait(exc)

    jobs = _TaskJobs(engine, run_job, priority, urgent_after)
    driver = FileDriver([file], jobs)
    at_start = True
    held_tokens = 0  # of deltas dropped as leading whitespace, counted with the next one
    try:
        driver.start()
        for piece_events in pieces:
            piece_events.end_if_done(driver)
        for piece_events in pieces:
            while (item := await piece_events.queue.get()) is not _PIECE_END:
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, TextDelta):
                    text = item.text.lstrip() if at_start else item.text
                    held_tokens += item.tokens
                    if text:
                        at_start = False
                        yield TextDelta(text, held_tokens)
                        held_tokens = 0
                else:
                    yield SegmentClosed(file.map_segment(piece_events.piece, item.segment, file.next_segment_id()))
    finally:
        # Nothing awaits before the aborts and releases are sent: a cancelled caller may not get to resume.
        tasks = jobs.cancel_all()
        driver.abort_all()
        await asyncio.gather(*tasks, return_exceptions=True)
    yield TranscriptionFinished(file.result(), sum(p.tokens for p in pieces))


class _PieceEvents:
    """One piece's events (text deltas and piece-local segments) in a queue, ended by _PIECE_END."""

    def __init__(self, file: FileTranscription, piece: Piece):
        self.file, self.piece = file, piece
        self.queue: asyncio.Queue = asyncio.Queue()
        self.tokens = 0  # decoded by this piece's jobs
        self.sent_segments = 0
        self.ended = False

    def emit(self, event: TextDelta | SegmentClosed) -> None:
        self.queue.put_nowait(event)

    def end_if_done(self, driver: FileDriver) -> None:
        """End the queue once the piece is finished and its last result is recorded and emitted."""
        if not self.ended and driver.is_idle(self.file, self.piece) and self.piece.machine.done:
            self.ended = True
            self.queue.put_nowait(_PIECE_END)

    async def run_job(self, job: WindowJob, outputs: AsyncIterator[RequestOutput], driver: FileDriver) -> None:
        """Consume one job's outputs, emitting deltas and segments closed so far, then hand the result to the
        driver (the seek loop's CPU work, e.g. word timing, on a worker thread) and emit the window's segments."""
        machine = self.piece.machine
        text = _WindowText(machine.loaded)
        final = None
        undelivered = 0  # tokens decoded since the last delta
        async with aclosing(outputs):  # closing it at once aborts the request if we are cancelled mid-window
            async for out in outputs:
                final = out
                if job.kind != "transcribe" or not out.new_tokens:
                    continue
                undelivered += len(out.new_tokens)
                delta = text.delta(out.tokens)
                if delta:
                    self.emit(TextDelta(delta, undelivered))
                    undelivered = 0
                for segment in machine.preview_segments(out.tokens)[self.sent_segments - len(machine.segments):]:
                    self.sent_segments += 1
                    self.emit(SegmentClosed(segment))
        self.tokens += len(final.tokens)
        await asyncio.to_thread(driver.record, job.job_id, final)
        driver.advance(job.job_id)
        for segment in machine.segments[self.sent_segments:]:
            self.sent_segments += 1
            self.emit(SegmentClosed(segment))
