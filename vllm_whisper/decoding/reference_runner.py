"""Long-form transcription on the reference decoder: the oracle the engine path (transcribe/batch.py) is tested
against.

The same seek loop as production (transcribe/sequential.py's LongFormTranscription), with each window job decoded
one at a time by the unbatched greedy decoder (greedy.py) instead of the engine. Tests and benchmarks only:
production code never imports it (tests/test_import_layers.py).
"""

from __future__ import annotations

import math

import numpy as np

from vllm_whisper.decoding.alignment import reference_alignment
from vllm_whisper.decoding.greedy import encode_window, greedy_decode
from vllm_whisper.model_executor.loader import LoadedModel
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.transcribe.result import TranscriptionResult
from vllm_whisper.transcribe.sequential import JobResult, LongFormTranscription, WindowJob


def run_job_with_reference(loaded: LoadedModel, job: WindowJob) -> JobResult:
    """Decode one job with the unbatched reference decoder (greedy, or sampling at the job's temperature)."""
    if job.params.beam_size > 1 and job.alignment is None:
        raise ValueError("the reference decoder is greedy; run beam search on the engine (LLM.transcribe)")
    p = job.params
    if p.has_penalties or (p.temperature > 0 and (p.top_k or p.top_p < 1.0 or p.min_p)):
        raise ValueError("the reference decoder samples plainly; run penalties and top-k/top-p/min-p on the engine")
    window = encode_window(loaded.model, job.features)
    if job.alignment is not None:
        aligned = reference_alignment(loaded, window.cross_kv, job.prompt, job.alignment)
        return JobResult([], 0.0, math.nan, job.params.temperature, alignment=aligned)
    out = greedy_decode(loaded.model, window, job.prompt, job.params.rules, job.params.max_new_tokens,
                        job.params.no_speech_index, job.params.temperature, job.params.seed)
    return JobResult(out.tokens, out.sum_logprob, out.no_speech_prob, job.params.temperature)


def transcribe_sequential(loaded: LoadedModel, audio: np.ndarray, params: TranscriptionParams) -> TranscriptionResult:
    """Transcribe one file window by window with the reference decoder (the oracle for the engine path)."""
    machine = LongFormTranscription(loaded, audio, params, "audio")
    while (job := machine.next_job()) is not None:
        machine.on_result(job, run_job_with_reference(loaded, job))
    return machine.result()
