"""Drive a synchronous engine until its requests finish (tests and benchmarks)."""

from __future__ import annotations

from typing import Iterable

from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.engine.request import RequestOutput


def run_to_completion(engine: LLMEngine, jobs: Iterable[tuple] = ()) -> dict[str, RequestOutput]:
    """Add each (request_id, features, prompt, params) job, step until idle, return the final outputs by id."""
    for request_id, features, prompt, params in jobs:
        engine.add_request(request_id, features, prompt, params)
    finished: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
    return finished
