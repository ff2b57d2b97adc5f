"""One short window through a freshly built engine, so the first client does not pay for lazy initialisation."""

from __future__ import annotations

import logging
import time

import numpy as np

from vllm_whisper.engine.llm_engine import LLMEngine

logger = logging.getLogger("vllm_whisper.api_server")


def warm_up(engine: LLMEngine) -> None:
    """Run one short window through the engine and load the VAD model (kernel selection, allocator growth,
    model files happen here rather than in a client's request)."""
    from vllm_whisper.audio.vad import speech_probabilities
    from vllm_whisper.params import TranscriptionParams
    from vllm_whisper.transcribe.batch import transcribe_batch

    noise = np.random.default_rng(0).normal(0, 0.01, 16000).astype(np.float32)
    started = time.perf_counter()
    transcribe_batch(engine, [noise], TranscriptionParams(max_new_tokens=8, temperature=(0.0,),
                                                          silence_threshold_db=None))
    speech_probabilities(noise)
    logger.info("warm-up done in %.2f s", time.perf_counter() - started)
