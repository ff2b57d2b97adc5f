"""On the CPU a step's new windows go through the encoder one full window per forward (engine/encoder_batching.py),
in the whole-window and the chunked encoder paths alike, and their cross K/V equal encoding them all together;
the glibc allocator tuning that keeps those buffers for reuse applies once and respects a user's own settings."""

from __future__ import annotations

import pytest
import torch

from vllm_whisper.config import EngineConfig
from vllm_whisper.engine import cpu_allocator
from vllm_whisper.engine.encoder_batching import encoder_windows_per_call, micro_batches
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.engine.sampler import SamplingParams
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.transcribe.sequential import build_rules


def test_windows_per_call():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert encoder_windows_per_call(cpu, 1500) == 1
    assert encoder_windows_per_call(cpu, 1024) == 1  # the shortest audio-context bucket is over half a window
    assert encoder_windows_per_call(cpu, 500) == 3
    assert encoder_windows_per_call(cuda, 1500) is None
    assert micro_batches([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    assert micro_batches([1, 2, 3], None) == [[1, 2, 3]]
    assert micro_batches(range(4), 3) == [range(0, 3), range(3, 4)]


@pytest.mark.parametrize("layers_per_step", [None, 1])
def test_cpu_encodes_one_window_per_forward_with_the_batched_result(small_random, layers_per_step):
    model = small_random.model
    gen = torch.Generator().manual_seed(5)
    features = [torch.randn(80, 3000, generator=gen) for _ in range(3)]
    engine = LLMEngine(small_random, EngineConfig(num_kv_blocks=32, num_cross_slots=4, kv_cache_dtype="float32",
                                                  encoder_layers_per_step=layers_per_step))
    params = SamplingParams(build_rules(small_random, TranscriptionParams(timestamps=False)), max_new_tokens=4)
    prompt = small_random.tokenizer.sot_sequence("en", "transcribe", timestamps=False)
    batches: list[int] = []
    handle = model.encoder.conv1.register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
    try:
        for i, f in enumerate(features):
            engine.add_request(f"r{i}", f, prompt, params)
        while any(r.cross_slot is None or r.window.frames is None for r in engine.requests.values()):
            engine.step()
    finally:
        handle.remove()
    assert batches == [1, 1, 1]
    with torch.inference_mode():
        together = model.compute_cross_kv(model.encode(torch.stack(features)))
    for i in range(3):
        slot = engine.requests[f"r{i}"].cross_slot
        for layer, (k, v) in enumerate(together):
            torch.testing.assert_close(engine.runner.cache.cross_k[layer][slot], k[i], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(engine.runner.cache.cross_v[layer][slot], v[i], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("environ, reason", [
    ({}, None),
    ({"VLLM_WHISPER_KEEP_MALLOC": "1"}, "VLLM_WHISPER_KEEP_MALLOC is set"),
    ({"VLLM_WHISPER_KEEP_MALLOC": "0"}, None),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_ is set"),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, "GLIBC_TUNABLES is set"),
    ({"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"}, "tcmalloc is preloaded"),
])
def test_allocator_tuning_respects_the_users_settings(environ, reason):
    assert cpu_allocator.allocator_tuning_skipped(environ) == reason


def test_allocator_tuning_applies_once_on_glibc(monkeypatch):
    monkeypatch.setattr(cpu_allocator, "_applied", False)
    monkeypatch.setattr(cpu_allocator, "_left_alone_because", None)
    assert cpu_allocator.tune_cpu_allocator({"VLLM_WHISPER_KEEP_MALLOC": "1"}) is False
    calls = []
    real = cpu_allocator._glibc_mallopt()
    if real is None:
        pytest.skip("not glibc")
    monkeypatch.setattr(cpu_allocator, "_glibc_mallopt", lambda: lambda *a: calls.append(a) or real(*a))
    assert cpu_allocator.tune_cpu_allocator({}) is True
    assert calls == [(cpu_allocator.M_MMAP_THRESHOLD, 32 * 2**20), (cpu_allocator.M_TRIM_THRESHOLD, 2**30)]
    assert cpu_allocator.tune_cpu_allocator({}) is True and len(calls) == 2  # once per process


def test_a_server_whose_models_unload_keeps_its_own_threshold(monkeypatch):
    """map_large_blocks_separately (multi-model servers with a TTL or budget) wins over the engines' tuning."""
    from vllm_whisper.entrypoints import memory_release

    monkeypatch.setattr(cpu_allocator, "_applied", False)
    monkeypatch.setattr(cpu_allocator, "_left_alone_because", None)
    monkeypatch.setattr(memory_release, "_libc", lambda: None)  # leave this test process's malloc as it is
    memory_release.map_large_blocks_separately()
    assert cpu_allocator.tune_cpu_allocator({}) is False
    assert "models may unload" in cpu_allocator.allocator_tuning_skipped({})
