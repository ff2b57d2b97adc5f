"""Transcribe many files at once on the engine: every file's next window (every piece's, in parallel chunking)
is an engine request, so windows of different files decode in the same batch while each piece keeps its own
sequential seek loop."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence, Union

import numpy as np

from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.transcribe.driver import FileDriver
from vllm_whisper.transcribe.result import TranscriptionResult
from vllm_whisper.transcribe.file_plan import FileTranscription
from vllm_whisper.transcribe.sequential import WindowJob


class _EngineJobs:
    """Jobs straight onto the synchronous engine: a request each, outputs collected by the step loop."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine

    def submit(self, job: WindowJob) -> None:
        if job.alignment is not None:
            self.engine.add_alignment_request(job.job_id, job.features, job.prompt, job.alignment,
                                              window_key=job.window_key, retain_window=True)
        else:
            self.engine.add_request(job.job_id, job.features, job.prompt, job.params, job.audio_seconds,
                                    window_key=job.window_key, retain_window=True,
                                    full_audio_context=job.full_audio_context)

    def release_window(self, window_key: str) -> None:
        self.engine.release_window(window_key)

    def abort(self, job_id: str) -> None:
        self.engine.abort_request(job_id)


AudioOrError = Union[np.ndarray, Exception]  # an input that could not be decoded travels as its exception


class EngineWindowError(RuntimeError):
    """The engine failed one of a file's windows (the other files are not affected)."""


def transcribe_batch(engine: LLMEngine, audios: Sequence[np.ndarray],
                     params: TranscriptionParams | Sequence[TranscriptionParams]) -> list[TranscriptionResult]:
    """Run every file's seek loop concurrently on one engine; results come back in input order."""
    params_list = list(params) if isinstance(params, Sequence) else [params] * len(audios)
    if len(params_list) != len(audios):
        raise ValueError("give one TranscriptionParams, or one per audio input")
    results: dict[int, TranscriptionResult] = {}
    inputs = ((i, audio, p) for i, (audio, p) in enumerate(zip(audios, params_list)))
    for index, outcome in iter_batch(engine, inputs, max_active_files=max(1, len(audios))):
        if isinstance(outcome, Exception):
            raise outcome
        results[index] = outcome
    return [results[i] for i in range(len(audios))]


def iter_batch(engine: LLMEngine, inputs: Iterable[tuple[int, AudioOrError, TranscriptionParams]],
               max_active_files: int) -> Iterator[tuple[int, TranscriptionResult | Exception]]:
    """Yield (index, result) for each input as soon as its last window finishes (completion order).

    Inputs are pulled lazily: at most max_active_files files are on the engine (their audio and log-mel in
    memory) at once; another is pulled each time one finishes, so any number of inputs runs in bounded memory
    while the active files' windows share engine steps. An input given as an exception (it could not be decoded)
    is yielded back as it is when its turn comes; a file whose window fails in the engine is yielded as an
    EngineWindowError and the others go on. Closing the iterator aborts the work in flight.
    """
    if max_active_files < 1:
        raise ValueError(f"max_active_files must be at least 1, got {max_active_files}")
    pending = iter(inputs)
    exhausted = False
    active: dict[int, FileTranscription] = {}  # id(file) -> file, for the files with jobs on the engine
    indices: dict[int, int] = {}  # id(file) -> input index
    driver = FileDriver([], _EngineJobs(engine))
    try:
        while True:
            while not exhausted and len(active) < max_active_files:
                item = next(pending, None)
                if item is None:
                    exhausted = True
                    break
                index, audio, params = item
                if isinstance(audio, Exception):
                    yield index, audio
                    continue
                file = FileTranscription(engine.loaded, audio, params, f"file{index}")
                driver.add(file)
                if not driver.has_work(file):  # nothing to decode (empty or silent audio)
                    yield index, file.result()
                    continue
                active[id(file)], indices[id(file)] = file, index
            if not active:
                return
            finished: list[tuple[int, TranscriptionResult | Exception]] = []
            outputs = engine.step()
            if not outputs and engine.is_stalled:
                raise RuntimeError("the engine cannot admit any waiting window: every cross-attention slot is held")
            for out in outputs:
                if not out.finished or out.request_id not in driver.in_flight:
                    continue
                file, _ = driver.in_flight[out.request_id]
                if out.error is not None:
                    driver.abort_file(file)
                    error = EngineWindowError(f"the engine failed window {out.request_id}: {out.error}")
                    finished.append((indices.pop(id(file)), error))
                    del active[id(file)]
                    continue
                driver.complete(out.request_id, out)
                if not driver.has_work(file):
                    finished.append((indices.pop(id(file)), file.result()))
                    del active[id(file)]
            yield from finished
    finally:
        driver.abort_all()
