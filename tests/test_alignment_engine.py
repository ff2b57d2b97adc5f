"""Word alignment as an engine operation: an alignment request runs the alignment heads' forced pass in a step,
reading the window's cross K/V from its slot (no second encoder run), batched with the step's other alignment
passes, counted in EngineStats and /metrics; nothing outside the engine calls the model."""

from __future__ import annotations

import asyncio
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vllm_whisper.audio import load_audio
from vllm_whisper.config import EngineConfig
from vllm_whisper.decoding.alignment import reference_alignment
from vllm_whisper.decoding.greedy import encode_window
from vllm_whisper.engine.alignment import AlignmentParams
from vllm_whisper.engine.async_engine import AsyncLLMEngine
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.engine.sampler import SamplingParams
from vllm_whisper.entrypoints.metrics import ServerMetrics
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.testing.engine_runs import run_to_completion
from vllm_whisper.testing.speech import synthesize
from vllm_whisper.transcribe.batch import transcribe_batch
from vllm_whisper.decoding.reference_runner import transcribe_sequential
from vllm_whisper.transcribe.sequential import build_rules

PACKAGE = Path(__file__).resolve().parents[1] / "vllm_whisper"


def windows(loaded, count: int) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(loaded.config.num_mel_bins, 3000) for _ in range(count)]


def align_prompt(loaded) -> list[int]:
    return loaded.tokenizer.sot_sequence("en", "transcribe", timestamps=False)


def text_params(loaded, text: str, num_frames: int = 2400) -> AlignmentParams:
    return AlignmentParams(tuple(loaded.tokenizer.encode(text)), num_frames)


def test_alignment_reads_the_retained_slot_without_encoding_again(small_random):
    engine = LLMEngine(small_random, EngineConfig(num_kv_blocks=64, num_cross_slots=4, kv_cache_dtype="float32"))
    [features] = windows(small_random, 1)
    rules = build_rules(small_random, TranscriptionParams())
    engine.add_request("decode", features, align_prompt(small_random)[:1], SamplingParams(rules, max_new_tokens=3),
                       window_key="w", retain_window=True)
    run_to_completion(engine)
    params = text_params(small_random, " The quick brown fox jumps over the lazy dog.")
    engine.add_alignment_request("align", features, align_prompt(small_random), params, window_key="w")
    [out] = run_to_completion(engine).values()
    stats = engine.stats
    assert stats.encoder_runs == 1 and stats.alignment_passes == 1
    assert out.request_id == "align" and out.finished and out.tokens == []
    expected = reference_alignment(small_random, encode_window(small_random.model, features).cross_kv,
                                   align_prompt(small_random), params)
    assert out.alignment.matrix.shape == (len(params.text_tokens) + 1, params.num_frames // 2)
    np.testing.assert_allclose(out.alignment.matrix, expected.matrix, atol=1e-4)
    assert out.alignment.token_probs == pytest.approx(expected.token_probs, abs=1e-5)
    engine.release_window("w")
    assert engine.stats.num_free_cross_slots == 4 and not engine.has_unfinished_requests()


def test_a_steps_alignment_passes_run_together_padded(small_random):
    """Three texts of different lengths over two windows: one step, one encoder run per window."""
    engine = LLMEngine(small_random, EngineConfig(num_kv_blocks=64, num_cross_slots=4, kv_cache_dtype="float32"))
    features = windows(small_random, 2)
    texts = [" Hi.", " The birch canoe slid on the smooth planks.", " Glue the sheet to the dark blue background."]
    params = [text_params(small_random, text, frames) for text, frames in zip(texts, (300, 3000, 1500))]
    window_of = [0, 0, 1]
    for i, p in enumerate(params):
        engine.add_alignment_request(f"a{i}", features[window_of[i]], align_prompt(small_random), p,
                                     window_key=f"w{window_of[i]}")
    outputs = {out.request_id: out for out in engine.step()}
    assert sorted(outputs) == ["a0", "a1", "a2"] and all(o.finished for o in outputs.values())
    stats = engine.stats
    assert stats.steps == 1 and stats.alignment_passes == 3 and stats.encoder_runs == 2
    assert stats.num_free_cross_slots == 4 and not engine.has_unfinished_requests()
    for i, p in enumerate(params):
        cross_kv = encode_window(small_random.model, features[window_of[i]]).cross_kv
        expected = reference_alignment(small_random, cross_kv, align_prompt(small_random), p)
        np.testing.assert_allclose(outputs[f"a{i}"].alignment.matrix, expected.matrix, atol=1e-4)
        assert outputs[f"a{i}"].alignment.token_probs == pytest.approx(expected.token_probs, abs=1e-5)


def test_alignment_requests_are_validated_and_aborted_cleanly(small_random):
    engine = LLMEngine(small_random, EngineConfig(num_kv_blocks=64, num_cross_slots=4, kv_cache_dtype="float32"))
    [features] = windows(small_random, 1)
    prompt, tok = align_prompt(small_random), small_random.tokenizer
    with pytest.raises(ValueError, match="text tokens"):
        engine.add_alignment_request("x", features, prompt, AlignmentParams((tok.timestamp_begin,), 3000))
    with pytest.raises(ValueError, match="num_frames"):
        engine.add_alignment_request("x", features, prompt, AlignmentParams((1, 2), 1))
    with pytest.raises(ValueError, match="at least one"):
        engine.add_alignment_request("x", features, prompt, AlignmentParams((), 3000))
    with pytest.raises(ValueError, match="positions"):
        engine.add_alignment_request("x", features, prompt, AlignmentParams((1,) * 448, 3000))
    engine.add_alignment_request("x", features, prompt, AlignmentParams((1, 2), 3000), window_key="w")
    with pytest.raises(ValueError, match="in use"):
        engine.add_alignment_request("x", features, prompt, AlignmentParams((1, 2), 3000))
    assert engine.abort_request("x") and not engine.abort_request("x")
    assert engine.step() == [] and not engine.has_unfinished_requests()
    assert engine.stats.num_free_cross_slots == 4 and engine.stats.alignment_passes == 0


def test_an_alignment_waiting_for_a_slot_held_by_retained_windows_waits(small_random):
    engine = LLMEngine(small_random, EngineConfig(num_kv_blocks=64, num_cross_slots=1))
    first, second = windows(small_random, 2)
    prompt, params = align_prompt(small_random), AlignmentParams((1, 2, 3), 3000)
    engine.add_alignment_request("a", first, prompt, params, window_key="kept", retain_window=True)
    run_to_completion(engine)
    engine.add_alignment_request("b", second, prompt, params, window_key="other")
    assert engine.step() == [] and engine.is_stalled  # it waits for the slot (async callers release it later)
    engine.release_window("kept")
    assert [out.request_id for out in engine.step()] == ["b"]
    assert engine.stats.num_free_cross_slots == 1 and engine.stats.encoder_runs == 2


def test_async_engine_aligns_and_exposes_the_model(small_random):
    engine = AsyncLLMEngine(LLMEngine(small_random, EngineConfig(num_kv_blocks=64, num_cross_slots=4)))
    try:
        assert engine.loaded is small_random and engine.tokenizer is small_random.tokenizer
        [features] = windows(small_random, 1)
        params = text_params(small_random, " Hello world.")

        async def align():
            outputs = [out async for out in engine.align("a", features, align_prompt(small_random), params)]
            return outputs, await engine.wait_idle()

        [out], stats = asyncio.run(align())
        assert out.finished and out.alignment.matrix.shape == (len(params.text_tokens) + 1, 1200)
        assert stats.alignment_passes == 1 and stats.encoder_runs == 1
    finally:
        engine.shutdown()


def test_alignment_passes_are_a_prometheus_counter(small_random):
    engine = LLMEngine(small_random, EngineConfig(num_kv_blocks=64, num_cross_slots=4, kv_cache_dtype="float32"))
    metrics = ServerMetrics.create("whisper-1")
    for passes in (2, 2, 5):
        metrics.update_engine(replace(engine.stats, alignment_passes=passes))
    text = metrics.render().decode()
    assert 'vllm_whisper:alignment_passes_total{model_name="whisper-1"} 5.0' in text


def test_word_timestamps_run_alignment_in_the_engine_one_encoder_run_per_window(tiny_en, speech_dir, monkeypatch):
    """Two one-window files with word timestamps: two alignment passes in the engine stats, one encoder run
    per window, no model call from transcribe/, and the reference loop's words."""
    texts = ("The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.")
    audios = [load_audio(synthesize(t, speech_dir / f"align_engine{i}.wav").path) for i, t in enumerate(texts)]
    params = TranscriptionParams(word_timestamps=True, temperature=0.0)
    expected = [transcribe_sequential(tiny_en, audio, params) for audio in audios]
    callers = []
    original = tiny_en.model.decode
    monkeypatch.setattr(tiny_en.model, "decode", lambda *a, **k: callers.append(
        Path(sys._getframe(1).f_code.co_filename).parent.name) or original(*a, **k))
    engine = LLMEngine(tiny_en, EngineConfig(kv_cache_space_gib=0.25))
    results = transcribe_batch(engine, audios, params)
    stats = engine.stats
    assert stats.alignment_passes == 2 and stats.encoder_runs == 2
    assert callers and set(callers) == {"engine"}  # the decoder ran only from the engine, alignment included
    for got, want in zip(results, expected):
        words = [(w.word, w.start, w.end) for s in got.segments for w in s.words]
        assert words and words == [(w.word, w.start, w.end) for s in want.segments for w in s.words]
    assert stats.num_free_cross_slots == stats.num_cross_slots


@pytest.mark.parametrize("folder", ["transcribe", "entrypoints"])
def test_nothing_outside_the_engine_calls_the_model_or_reaches_into_it(folder):
    """transcribe/ and entrypoints/ use the engines' public methods only; the oracle (decoding/) is exempt."""
    forbidden = re.compile(r"engine\.engine\b|window_cross_kv|\bmodel\.(encode|decode|compute_cross_kv|"
                           r"compute_logits)\(|add_word_timestamps|find_alignment")
    offenders = [f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
                 for path in sorted((PACKAGE / folder).rglob("*.py"))
                 for n, line in enumerate(path.read_text().splitlines(), 1) if forbidden.search(line)]
    assert offenders == []
