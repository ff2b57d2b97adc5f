"""Long-form semantics on the engine: temperature fallback reusing the encoder output, conditioning on previous
text, initial prompts, and silence handling."""

from __future__ import annotations

import numpy as np
import pytest

from vllm_whisper import LLM, TranscriptionParams
from vllm_whisper.audio import load_audio
from vllm_whisper.decoding.reference_runner import run_job_with_reference, transcribe_sequential
from vllm_whisper.testing.speech import synthesize
from vllm_whisper.transcribe.sequential import JobResult, LongFormTranscription


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(model="tiny.en")


def test_repetition_triggers_fallback_and_reuses_the_window(llm, speech_dir):
    clip = synthesize(" ".join(["thank you."] * 14), speech_dir / "repeat.wav")
    audio = load_audio(clip.path)
    before = llm.engine.stats.encoder_runs
    [greedy_only] = llm.transcribe([audio], TranscriptionParams(temperature=0.0))
    assert greedy_only.segments[0].compression_ratio > 2.4 and greedy_only.segments[0].temperature == 0.0
    # Greedy decoding runs away (far more "thank you"s than spoken); a threshold that real repetition passes
    # sends the window to a hotter retry, which is kept.
    [result] = llm.transcribe([audio], TranscriptionParams(seed=3, compression_ratio_threshold=12))
    assert result.segments and all(s.temperature > 0.0 for s in result.segments)  # fell back
    assert all(s.compression_ratio <= 12 for s in result.segments)
    assert len(result.text) < len(greedy_only.text) / 2
    assert llm.engine.stats.encoder_runs - before == 2  # one window, encoded once per transcribe call
    assert "thank you" in result.text.lower()


def test_when_every_temperature_fails_the_most_likely_attempt_is_kept(tiny_en, speech_dir):
    clip = synthesize(" ".join(["thank you."] * 14), speech_dir / "repeat3.wav")
    audio = load_audio(clip.path)
    machine = LongFormTranscription(tiny_en, audio, TranscriptionParams(seed=3), "all-fail")
    while (job := machine.next_job()) is not None:
        machine.on_result(job, run_job_with_reference(tiny_en, job))
    result = machine.result()
    assert machine.fallbacks == 5  # every temperature of the schedule was tried
    assert result.segments[0].temperature == 0.0  # all repetitive: the greedy decode is the most likely


def test_fallback_on_the_engine_equals_the_reference_loop(tiny_en, speech_dir):
    """Sampling at fallback temperatures is seeded per job, so the engine and the reference loop agree."""
    clip = synthesize(" ".join(["thank you."] * 14), speech_dir / "repeat2.wav")
    audio = load_audio(clip.path)
    params = TranscriptionParams(seed=11, temperature=(0.0, 0.4, 0.8))
    from vllm_whisper.config import EngineConfig
    from vllm_whisper.engine.llm_engine import LLMEngine
    from vllm_whisper.transcribe.batch import transcribe_batch

    [got] = transcribe_batch(LLMEngine(tiny_en, EngineConfig(kv_cache_space_gib=0.5)), [audio], params)
    expected = transcribe_sequential(tiny_en, audio, params)
    assert [(s.tokens, s.temperature) for s in got.segments] == [(s.tokens, s.temperature) for s in expected.segments]


def test_silence_gives_empty_text_without_decoding(llm):
    before = llm.engine.stats.encoder_runs
    [result] = llm.transcribe([np.zeros(16000 * 45, dtype=np.float32)])
    assert result.text == "" and result.segments == [] and result.duration == 45.0
    assert llm.engine.stats.encoder_runs == before
    # With the energy gate off, the no-speech rule still decides; Whisper hears "you" in silence (as the
    # reference does), with a high no-speech probability.
    [decoded] = llm.transcribe([np.zeros(16000 * 10, dtype=np.float32)], TranscriptionParams(silence_threshold_db=None))
    assert all(s.no_speech_prob > 0.6 for s in decoded.segments)


def test_window_judged_silent_is_skipped(tiny_en):
    machine = LongFormTranscription(tiny_en, np.full(16000 * 40, 0.01, dtype=np.float32), TranscriptionParams(), "t")
    job = machine.next_job()
    machine.on_result(job, JobResult([50363, 291, 50413], sum_logprob=-6.0, no_speech_prob=0.9))
    assert machine.skipped_windows == 1 and machine.seek == 3000 and machine.segments == []
    assert machine.fallbacks == 0  # silence never falls back


def test_previous_text_and_initial_prompt_condition_the_next_window(tiny_en):
    tok = tiny_en.tokenizer
    audio = np.full(16000 * 50, 0.01, dtype=np.float32)
    machine = LongFormTranscription(tiny_en, audio, TranscriptionParams(initial_prompt="Harvard sentences."), "t")
    first = machine.next_job()
    prompt_tokens = tok.encode(" Harvard sentences.")
    assert first.prompt == [tok.special.sot_prev, *prompt_tokens, tok.sot]
    segment = [tok.timestamp_begin, *tok.encode(" The birch canoe."), tok.timestamp_begin + 100]
    spoken = [*segment, tok.timestamp_begin + 100]  # a closed pair: the next window starts at 2.00 s
    machine.on_result(first, JobResult(spoken, sum_logprob=-1.0, no_speech_prob=0.01))
    second = machine.next_job()
    assert second.prompt == [tok.special.sot_prev, *prompt_tokens, *segment, tok.sot]
    assert machine.seek == 200  # moved to the last timestamp (2.00 s)
    unconditioned = LongFormTranscription(tiny_en, audio, TranscriptionParams(condition_on_previous_text=False), "u")
    job = unconditioned.next_job()
    unconditioned.on_result(job, JobResult(spoken, sum_logprob=-1.0, no_speech_prob=0.01))
    assert unconditioned.next_job().prompt == [tok.sot]


def test_invalid_temperatures_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        TranscriptionParams(temperature=(0.0, -0.2))
    assert TranscriptionParams(temperature=0.3).temperature == (0.3,)
