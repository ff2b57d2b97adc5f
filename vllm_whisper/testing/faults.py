"""Fault injection for the engine's containment tests: wrap the model runner so that steps touching chosen requests
fail the way real faults do (an encoder exception, NaN logits in one row, an out-of-memory error in the decoder)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.engine.request import Request

RequestFilter = Callable[[Request], bool]


@contextmanager
def _patched(engine: LLMEngine, name: str, replacement) -> Iterator[None]:
    runner = engine.runner
    setattr(runner, name, replacement)
    try:
        yield
    finally:
        delattr(runner, name)  # the class's method again


@contextmanager
def failing_encoder(engine: LLMEngine, poisoned: RequestFilter) -> Iterator[None]:
    """Any encoder batch holding a poisoned window raises, as a bad input or kernel fault would."""
    original, original_chunk = engine.runner.encode, engine.runner.encode_chunk

    def encode(requests: list[Request]) -> None:
        if any(poisoned(r) for r in requests):
            raise RuntimeError("injected encoder fault")
        original(requests)

    def encode_chunk(batch, stop: int) -> bool:  # encoding split across steps (--encoder-layers-per-step)
        if any(poisoned(r) for r in batch.requests):
            raise RuntimeError("injected encoder fault")
        return original_chunk(batch, stop)

    with _patched(engine, "encode", encode), _patched(engine, "encode_chunk", encode_chunk):
        yield


@contextmanager
def nan_logits(engine: LLMEngine, poisoned: RequestFilter) -> Iterator[None]:
    """The poisoned requests' rows come back from the decoder as NaN (a numerical fault in one row)."""
    original = engine.runner.run

    def run(seqs):
        step = original(seqs)
        rows = [row for row, seq in enumerate(seqs) if poisoned(seq.request)]
        if rows:
            with torch.inference_mode():
                step.logits = step.logits.clone()
                step.logits[rows] = float("nan")
        return step

    with _patched(engine, "run", run):
        yield


@contextmanager
def decoder_out_of_memory(engine: LLMEngine, poisoned: RequestFilter) -> Iterator[None]:
    """Any decoder batch holding a poisoned request raises torch's out-of-memory error before it returns."""
    original = engine.runner.run

    def run(seqs):
        if any(poisoned(seq.request) for seq in seqs):
            raise torch.OutOfMemoryError("injected: CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(seqs)

    with _patched(engine, "run", run):
        yield
