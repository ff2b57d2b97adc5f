"""The async engine: concurrent streams equal the synchronous engine, and a stream closed early frees its
blocks and slot."""

from __future__ import annotations

import asyncio

import pytest
import torch

from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.async_engine import AsyncLLMEngine
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.engine.sampler import SamplingParams
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.testing.engine_runs import run_to_completion
from vllm_whisper.transcribe.sequential import build_rules


def make_requests(loaded, count: int):
    torch.manual_seed(0)
    rules = build_rules(loaded, TranscriptionParams(timestamps=False))
    prompt = loaded.tokenizer.sot_sequence(None, "transcribe", timestamps=False)
    return [(f"r{i}", torch.randn(80, 3000), prompt, SamplingParams(rules, max_new_tokens=20 + i))
            for i in range(count)]


def sync_reference(loaded, requests) -> dict[str, list[int]]:
    engine = LLMEngine(loaded, EngineConfig(num_kv_blocks=200, num_cross_slots=8))
    return {k: v.tokens for k, v in run_to_completion(engine, requests).items()}


def test_concurrent_streams_match_the_sync_engine(small_random):
    requests = make_requests(small_random, 12)
    expected = sync_reference(small_random, requests)
    engine = AsyncLLMEngine(LLMEngine(small_random, EngineConfig(num_kv_blocks=60, num_cross_slots=4)))

    async def consume(request_id, features, prompt, params):
        seen, last = [], None
        async for out in engine.generate(request_id, features, prompt, params):
            seen += out.new_tokens
            last = out
        assert last.finished and last.tokens == seen
        return request_id, seen

    async def main():
        return dict(await asyncio.gather(*(consume(*r) for r in requests)))

    try:
        assert asyncio.run(main()) == expected
    finally:
        engine.shutdown()


def test_closing_a_stream_early_frees_its_cache(small_random):
    requests = make_requests(small_random, 6)
    engine = AsyncLLMEngine(LLMEngine(small_random, EngineConfig(num_kv_blocks=60, num_cross_slots=4)))

    async def stop_after_two(request_id, features, prompt, params):
        count = 0
        async for _ in engine.generate(request_id, features, prompt, params):
            count += 1
            if count == 2:
                break  # the client went away

    async def cancel_while_waiting(request_id, features, prompt, params):
        task = asyncio.ensure_future(_drain(engine.generate(request_id, features, prompt, params)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def main():
        await asyncio.gather(*(stop_after_two(*r) for r in requests[:4]),
                             *(cancel_while_waiting(*r) for r in requests[4:]))
        return await engine.wait_idle()

    try:
        stats = asyncio.run(main())
        assert stats.num_free_kv_blocks == stats.num_kv_blocks
        assert stats.num_free_cross_slots == stats.num_cross_slots
        assert stats.num_running == stats.num_waiting == 0
    finally:
        engine.shutdown()


async def _drain(stream):
    async for _ in stream:
        pass


def test_invalid_request_fails_only_its_stream(small_random):
    engine = AsyncLLMEngine(LLMEngine(small_random, EngineConfig(num_kv_blocks=60, num_cross_slots=4)))
    good = make_requests(small_random, 1)[0]

    async def main():
        with pytest.raises(ValueError, match="shape"):
            async for _ in engine.generate("bad", torch.zeros(80, 10), good[2], good[3]):
                pass
        outputs = [out async for out in engine.generate(*good)]
        return outputs[-1]

    try:
        last = asyncio.run(main())
        assert last.finished and engine.is_running
    finally:
        engine.shutdown()
