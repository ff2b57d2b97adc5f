"""Encoding split across engine steps (--encoder-layers-per-step): the same tokens as whole-window encoding, at
most N encoder layers in any step while running requests keep decoding, and aborts and encoder faults mid-way
contained."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.testing.engine_runs import (
    outputs_differ, random_window_jobs, run_to_completion, run_with_random_aborts)
from vllm_whisper.testing.faults import failing_encoder

from conftest import small_random_config
from test_engine import random_workload


@pytest.fixture(scope="module")
def three_layer_random(tiny_en_tokenizer):
    """A random-weight Whisper with three encoder layers, so one layer per step really splits a window."""
    from vllm_whisper.testing.random_model import random_model

    return random_model(dataclasses.replace(small_random_config(), encoder_layers=3), tiny_en_tokenizer, seed=5)


def chunked(loaded, layers: int = 1, **config) -> LLMEngine:
    return LLMEngine(loaded, EngineConfig(encoder_layers_per_step=layers, **config))


def test_split_encoding_equals_whole_encoding(tiny_en):
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    model = tiny_en.model
    with torch.inference_mode():
        whole = model.encode(mel)
        x = None
        for start in range(len(model.encoder.layers)):
            x = model.encode_layers(x, mel, start, start + 1)
    assert torch.equal(x, whole)


def test_at_most_n_layers_per_step_and_running_requests_keep_decoding(tiny_en):
    jobs = random_window_jobs(tiny_en, 5, seed=3, new_tokens=(20, 30))
    whole = run_to_completion(LLMEngine(tiny_en, EngineConfig(num_kv_blocks=400, num_cross_slots=8)), jobs)
    engine = chunked(tiny_en, 1, num_kv_blocks=400, num_cross_slots=8, max_encoder_windows_per_step=2)
    layers_run: list[int] = []
    original = engine.runner.encode_chunk

    def recording(batch, stop):
        layers_run.append(stop - batch.next_layer)
        return original(batch, stop)

    engine.runner.encode_chunk = recording
    engine.add_request(jobs[0][0], *jobs[0][1:])
    while not engine.scheduler.running:
        engine.step()
    for job in jobs[1:]:
        engine.add_request(job[0], *job[1:])
    got, first = {}, jobs[0][0]
    while engine.has_unfinished_requests():
        before = engine.requests[first].seqs[0].num_tokens if first in engine.requests else None
        for out in engine.step():
            if out.finished:
                got[out.request_id] = out
        if before is not None and first in engine.requests:
            assert engine.requests[first].seqs[0].num_tokens == before + 1  # decoded in every step
    assert layers_run and max(layers_run) == 1
    assert outputs_differ(got, whole) == []
    stats = engine.stats
    assert stats.encoder_runs == len(jobs)
    assert stats.num_free_kv_blocks == stats.num_kv_blocks and stats.num_free_cross_slots == stats.num_cross_slots


def test_random_aborts_while_windows_encode_leak_nothing(three_layer_random):
    loaded = three_layer_random
    rng, windows, specs, reference = random_workload(loaded, seed=11, num_windows=4, num_specs=6)
    engine = chunked(loaded, 1, num_kv_blocks=40, num_cross_slots=5, block_size=4, max_num_seqs=12,
                     max_encoder_windows_per_step=2)
    checked, aborted = run_with_random_aborts(engine, windows, specs, reference, 120, rng, max_arrivals=6)
    stats = engine.stats
    assert checked + len(aborted) == 120 and len(aborted) > 8
    assert stats.num_free_kv_blocks == stats.num_kv_blocks and stats.num_free_cross_slots == stats.num_cross_slots
    assert stats.num_running == stats.num_waiting == 0


def test_an_encoder_fault_mid_way_fails_its_window_alone(tiny_en):
    jobs = random_window_jobs(tiny_en, 4, seed=3)
    clean = run_to_completion(chunked(tiny_en, 2, num_kv_blocks=200, num_cross_slots=8), jobs)
    engine = chunked(tiny_en, 2, num_kv_blocks=200, num_cross_slots=8, max_encoder_windows_per_step=4)
    with failing_encoder(engine, lambda request: request.request_id == "r2"):
        got = run_to_completion(engine, jobs)
    assert got["r2"].finish_reason == "error"
    assert outputs_differ({k: v for k, v in got.items() if k != "r2"},
                          {k: v for k, v in clean.items() if k != "r2"}) == []
    stats = engine.stats
    assert stats.num_free_cross_slots == stats.num_cross_slots and stats.failed_requests == 1
