"""Transcribe many files at once on the engine: every file's next window is an engine request, so windows of
different files decode in the same batch while each file keeps its own sequential seek loop."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.transcribe.result import TranscriptionResult
from vllm_whisper.transcribe.sequential import JobResult, LongFormTranscription, WindowJob


def transcribe_batch(engine: LLMEngine, audios: Sequence[np.ndarray],
                     params: TranscriptionParams | Sequence[TranscriptionParams]) -> list[TranscriptionResult]:
    """Run every file's seek loop concurrently on one engine; results come back in input order."""
    params_list = list(params) if isinstance(params, Sequence) else [params] * len(audios)
    if len(params_list) != len(audios):
        raise ValueError("give one TranscriptionParams, or one per audio input")
    machines = [LongFormTranscription(engine.loaded, audio, p, f"file{i}")
                for i, (audio, p) in enumerate(zip(audios, params_list))]
    in_flight: dict[str, tuple[LongFormTranscription, WindowJob]] = {}

    def submit(machine: LongFormTranscription) -> WindowJob | None:
        job = machine.next_job()
        if job is None:
            return None
        # Retain the window so a follow-up job on it (transcription after language detection) skips the encoder.
        engine.add_request(job.job_id, job.features, job.prompt, job.params, job.audio_seconds,
                           window_key=job.window_key, retain_window=True)
        in_flight[job.job_id] = (machine, job)
        return job

    for machine in machines:
        submit(machine)
    try:
        while in_flight:
            for out in engine.step():
                if not out.finished:
                    continue
                machine, job = in_flight.pop(out.request_id)
                machine.on_result(job, JobResult(out.tokens, out.sum_logprob, out.no_speech_prob, job.params.temperature))
                next_job = submit(machine)
                if next_job is None or next_job.window_key != job.window_key:
                    engine.release_window(job.window_key)
    finally:
        for request_id, (_, job) in list(in_flight.items()):
            engine.abort_request(request_id)
            engine.release_window(job.window_key)
    return [m.result() for m in machines]
