"""Transcribe many files at once on the engine: every file's next window (every piece's, in parallel chunking)
is an engine request, so windows of different files decode in the same batch while each piece keeps its own
sequential seek loop."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.transcribe.result import TranscriptionResult
from vllm_whisper.transcribe.file_plan import FileTranscription
from vllm_whisper.transcribe.sequential import JobResult, WindowJob


def transcribe_batch(engine: LLMEngine, audios: Sequence[np.ndarray],
                     params: TranscriptionParams | Sequence[TranscriptionParams]) -> list[TranscriptionResult]:
    """Run every file's seek loop concurrently on one engine; results come back in input order."""
    params_list = list(params) if isinstance(params, Sequence) else [params] * len(audios)
    if len(params_list) != len(audios):
        raise ValueError("give one TranscriptionParams, or one per audio input")
    files = [FileTranscription(engine.loaded, audio, p, f"file{i}")
             for i, (audio, p) in enumerate(zip(audios, params_list))]
    in_flight: dict[str, tuple[FileTranscription, WindowJob]] = {}

    def submit(file: FileTranscription) -> list[WindowJob]:
        jobs = file.next_jobs()
        for job in jobs:
            # Retain the window so a follow-up job on it (transcription after language detection, a fallback
            # retry) skips the encoder.
            engine.add_request(job.job_id, job.features, job.prompt, job.params, job.audio_seconds,
                               window_key=job.window_key, retain_window=True)
            in_flight[job.job_id] = (file, job)
        return jobs

    for file in files:
        submit(file)
    try:
        while in_flight:
            outputs = engine.step()
            if not outputs and engine.is_stalled:
                raise RuntimeError("the engine cannot admit any waiting window: every cross-attention slot is held")
            for out in outputs:
                if not out.finished:
                    continue
                if out.error is not None:
                    raise RuntimeError(f"the engine failed window {out.request_id}: {out.error}")
                file, job = in_flight.pop(out.request_id)
                result = JobResult(out.tokens, out.sum_logprob, out.no_speech_prob, job.params.temperature,
                                   engine.window_cross_kv(job.window_key))  # retained until released below
                file.on_result(job, result)
                next_keys = {j.window_key for j in submit(file)}
                if job.window_key not in next_keys:
                    engine.release_window(job.window_key)
    finally:
        for request_id, (_, job) in list(in_flight.items()):
            engine.abort_request(request_id)
            engine.release_window(job.window_key)
    return [f.result() for f in files]
