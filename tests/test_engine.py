"""The batched engine against the single-window greedy oracle: identical tokens, encoder and cross-K/V exactly
once per window (also under preemption), and no leaked blocks or slots after aborts."""

from __future__ import annotations

import random

import pytest
import torch

from vllm_whisper.audio import load_audio, window_features
from vllm_whisper.config import EngineConfig
from vllm_whisper.decoding.greedy import encode_window, greedy_decode
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.engine.sampler import SamplingParams
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.testing.engine_runs import run_to_completion, run_with_random_aborts
from vllm_whisper.transcribe.sequential import build_rules


def oracle(loaded, features, prompt, params: SamplingParams):
    window = encode_window(loaded.model, features)
    return greedy_decode(loaded.model, window, prompt, params.rules, params.max_new_tokens, params.no_speech_index)


@pytest.fixture(scope="module")
def thirty_windows(tiny_en, english_clips):
    """30 windows: the 24 sentences plus 6 of them mixed with noise (so outputs differ in length)."""
    rng = torch.Generator().manual_seed(0)
    features = []
    for i in range(30):
        audio = torch.from_numpy(load_audio(english_clips[i % len(english_clips)].path))
        if i >= len(english_clips):
            audio = audio + 0.01 * torch.randn(audio.shape, generator=rng)
        features.append(window_features(audio.numpy(), 80))
    return features


def test_thirty_windows_batched_equal_each_alone(tiny_en, thirty_windows):
    rules_ts = build_rules(tiny_en, TranscriptionParams(timestamps=True))
    rules_plain = build_rules(tiny_en, TranscriptionParams(timestamps=False))
    tok = tiny_en.tokenizer
    engine = LLMEngine(tiny_en, EngineConfig(kv_cache_space_gib=1.0, kv_cache_dtype="float32"))  # exact logprobs
    expected = {}
    for i, features in enumerate(thirty_windows):
        timestamps = i % 3 != 0  # mix both modes in one batch
        prompt = tok.sot_sequence(None, "transcribe", timestamps)
        params = SamplingParams(rules_ts if timestamps else rules_plain, no_speech_index=0)
        engine.add_request(f"w{i}", features, prompt, params)
        expected[f"w{i}"] = oracle(tiny_en, features, prompt, params)
    finished = run_to_completion(engine)
    assert set(finished) == set(expected)
    for request_id, reference in expected.items():
        out = finished[request_id]
        assert out.tokens == reference.tokens, request_id
        assert out.sum_logprob == pytest.approx(reference.sum_logprob, abs=1e-3)
        assert out.no_speech_prob == pytest.approx(reference.no_speech_prob, abs=1e-5)
    stats = engine.stats
    assert stats.encoder_runs == 30 and stats.cross_kv_projections == 30
    assert stats.num_free_kv_blocks == stats.num_kv_blocks and stats.num_free_cross_slots == stats.num_cross_slots
    assert stats.generated_tokens == sum(len(r.tokens) for r in expected.values())


def random_params(loaded, rng: random.Random) -> tuple[list[int], SamplingParams]:
    timestamps = rng.random() < 0.5
    rules = build_rules(loaded, TranscriptionParams(timestamps=timestamps))
    prompt = loaded.tokenizer.sot_sequence(None, "transcribe", timestamps)
    return prompt, SamplingParams(rules, max_new_tokens=rng.randrange(4, 40), no_speech_index=0)


def test_preemption_recomputes_without_reencoding(small_random):
    """Eight long requests on a cache of 12 blocks: preemptions happen, outputs stay exact, encoder runs once each."""
    rng = random.Random(1)
    torch.manual_seed(1)
    engine = LLMEngine(small_random, EngineConfig(num_kv_blocks=12, num_cross_slots=8, block_size=4))
    expected = {}
    for i in range(8):
        features = torch.randn(80, 3000)
        prompt, params = random_params(small_random, rng)
        params = SamplingParams(params.rules, max_new_tokens=30, no_speech_index=0)
        engine.add_request(str(i), features, prompt, params)
        expected[str(i)] = oracle(small_random, features, prompt, params).tokens
    finished = run_to_completion(engine)
    assert engine.stats.preemptions > 0
    assert {k: v.tokens for k, v in finished.items()} == expected
    assert engine.stats.encoder_runs == 8 and engine.stats.cross_kv_projections == 8


def random_workload(loaded, seed: int, num_windows: int, num_specs: int):
    """Random windows and (prompt, params) specs, the oracle's tokens for every pair, and the seeded rng that
    drives the run (arrivals, aborts)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    windows = [torch.randn(80, 3000) for _ in range(num_windows)]
    specs = [random_params(loaded, rng) for _ in range(num_specs)]
    reference = {(w, s): oracle(loaded, windows[w], *specs[s]).tokens
                 for w in range(len(windows)) for s in range(len(specs))}
    return rng, windows, specs, reference


def test_thousand_requests_with_random_aborts_leak_nothing(small_random):
    rng, windows, specs, reference = random_workload(small_random, seed=7, num_windows=5, num_specs=8)
    engine = LLMEngine(small_random, EngineConfig(num_kv_blocks=40, num_cross_slots=6, block_size=4,
                                                  max_num_seqs=16))
    checked, aborted = run_with_random_aborts(engine, windows, specs, reference, 1000, rng, max_arrivals=12)
    stats = engine.stats
    assert checked + len(aborted) == 1000 and len(aborted) > 50
    assert stats.num_free_kv_blocks == stats.num_kv_blocks
    assert stats.num_free_cross_slots == stats.num_cross_slots
    assert stats.num_running == stats.num_waiting == 0
    assert not engine.abort_request("r0")  # already gone


def test_request_validation(tiny_en):
    engine = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=64, num_cross_slots=2))
    params = SamplingParams(build_rules(tiny_en, TranscriptionParams()))
    with pytest.raises(ValueError, match="shape"):
        engine.add_request("a", torch.zeros(80, 100), [50257], params)
    with pytest.raises(ValueError, match="prompt"):
        engine.add_request("a", torch.zeros(80, 3000), [], params)
    engine.add_request("a", torch.zeros(80, 3000), [50257], params)
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("a", torch.zeros(80, 3000), [50257], params)
    small = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=2, num_cross_slots=1))
    with pytest.raises(ValueError, match="too small"):
        small.add_request("b", torch.zeros(80, 3000), [50257], params)


def test_cache_budget_is_planned_and_refused_when_too_small(tiny_en):
    engine = LLMEngine(tiny_en, EngineConfig(kv_cache_space_gib=0.5, max_num_seqs=8))
    stats = engine.stats
    assert stats.num_cross_slots == 8 and stats.num_kv_blocks == 8 * 28  # 448 positions / 16 per block
    with pytest.raises(ValueError, match="cannot hold one sequence"):
        LLMEngine(tiny_en, EngineConfig(kv_cache_space_gib=0.001))
