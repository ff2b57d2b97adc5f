"""Transcribe many files at once on the engine: every file's next window (every piece's, in parallel chunking)
is an engine request, so windows of different files decode in the same batch while each piece keeps its own
sequential seek loop."""

from __future__ import annotations

from typing import Sequence

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
                                    window_key=job.window_key, retain_window=True)

    def release_window(self, window_key: str) -> None:
        self.engine.release_window(window_key)

    def abort(self, job_id: str) -> None:
        self.engine.abort_request(job_id)


def transcribe_batch(engine: LLMEngine, audios: Sequence[np.ndarray],
                     params: TranscriptionParams | Sequence[TranscriptionParams]) -> list[TranscriptionResult]:
    """Run every file's seek loop concurrently on one engine; results come back in input order."""
    params_list = list(params) if isinstance(params, Sequence) else [params] * len(audios)
    if len(params_list) != len(audios):
        raise ValueError("give one TranscriptionParams, or one per audio input")
    files = [FileTranscription(engine.loaded, audio, p, f"file{i}")
             for i, (audio, p) in enumerate(zip(audios, params_list))]
    driver = FileDriver(files, _EngineJobs(engine))
    try:
        driver.start()
        while driver.in_flight:
            outputs = engine.step()
            if not outputs and engine.is_stalled:
                raise RuntimeError("the engine cannot admit any waiting window: every cross-attention slot is held")
            for out in outputs:
                if not out.finished:
                    continue
                if out.error is not None:
                    raise RuntimeError(f"the engine failed window {out.request_id}: {out.error}")
                driver.complete(out.request_id, out)
    finally:
        driver.abort_all()
    return [f.result() for f in files]
