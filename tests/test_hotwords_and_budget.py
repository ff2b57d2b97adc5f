"""What the window jobs get for hotwords (faster-whisper's place in the prompt) and for max_completion_tokens (one
allowance for the whole input, shared by the pieces that parallel chunking decodes at once)."""

from __future__ import annotations

import numpy as np
import pytest

from vllm_whisper.audio import load_audio
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.transcribe.file_plan import FileTranscription
from vllm_whisper.transcribe.sequential import JobResult, LongFormTranscription
from vllm_whisper.transcribe.token_budget import TokenBudget

HOTWORDS = "Kubernetes, gRPC, Grafana"


@pytest.fixture(scope="module")
def fox_audio(fox_clip) -> np.ndarray:
    return load_audio(fox_clip.path)


def first_prompt(loaded, audio, **options) -> list[int]:
    return LongFormTranscription(loaded, audio, TranscriptionParams(**options), "h").next_job().prompt


def test_hotwords_follow_startofprev_ahead_of_the_previous_text(tiny_en, fox_audio):
    tok, model = tiny_en.tokenizer, tiny_en.model
    hot = tok.encode(" " + HOTWORDS)
    start = model.get_decoder_prompt("en", "transcribe", True)  # <|startoftranscript|> ... without context
    assert first_prompt(tiny_en, fox_audio) == start
    assert first_prompt(tiny_en, fox_audio, hotwords=HOTWORDS) == [tok.special.sot_prev, *hot, *start]
    with_prompt = first_prompt(tiny_en, fox_audio, hotwords=HOTWORDS, initial_prompt="Hello there.")
    assert with_prompt == [tok.special.sot_prev, *hot, *tok.encode(" Hello there."), *start]


def test_a_forced_prefix_drops_hotwords_on_the_first_window(tiny_en, fox_audio):
    tok = tiny_en.tokenizer
    prompt = first_prompt(tiny_en, fox_audio, hotwords=HOTWORDS, prefix="The quick", timestamps=False)
    assert tok.special.sot_prev not in prompt and prompt[-len(tok.encode(" The quick")):] == tok.encode(" The quick")


def test_context_keeps_to_half_the_decoder_with_hotwords_first(tiny_en, fox_audio):
    tok = tiny_en.tokenizer
    long_prompt = " ".join(["previous words"] * 200)
    prompt = first_prompt(tiny_en, fox_audio, hotwords=HOTWORDS, initial_prompt=long_prompt)
    hot = tok.encode(" " + HOTWORDS)
    context = prompt[1:prompt.index(tok.sot)]
    assert len(context) == 223 and context[:len(hot)] == hot
    assert context[len(hot):] == tok.encode(" " + long_prompt)[-(223 - len(hot)):]  # the latest previous text


def test_token_budget_reserves_and_settles():
    budget = TokenBudget(300)
    assert budget.reserve(224) == 224 and budget.reserve(224) == 76 and budget.reserve(224) == 0
    assert not budget.spent_for_good
    budget.settle(224, 10)
    assert budget.reserve(224) == 214
    budget.settle(76, 76)
    budget.settle(214, 214)
    assert budget.spent == 300 and budget.spent_for_good
    assert TokenBudget(None).reserve(224) == 224


def _window_result(tok, text: str) -> JobResult:
    """A decoded window: a timed segment that ends the window (lone closing timestamp)."""
    tokens = [tok.timestamp_begin, *tok.encode(" " + text), tok.timestamp_begin + 100]
    return JobResult(tokens, -0.1 * len(tokens), 0.01)


def test_parallel_pieces_share_max_completion_tokens(tiny_en):
    tok = tiny_en.tokenizer
    noise = np.random.default_rng(0).normal(0, 0.1, 16000 * 70).astype(np.float32)
    params = TranscriptionParams(chunking_strategy="parallel", max_completion_tokens=300)
    file = FileTranscription(tiny_en, noise, params, "f")
    assert len(file.pieces) == 3
    first, second = file.next_jobs()  # the third piece waits: the first two hold the whole allowance
    assert (first.params.max_new_tokens, second.params.max_new_tokens) == (224, 76)
    file.on_result(first, _window_result(tok, "the quick brown fox"))
    used = len(_window_result(tok, "the quick brown fox").tokens)
    [third] = file.next_jobs(busy=[file.piece_of(second)])
    assert third.params.max_new_tokens == 300 - 76 - used
    file.on_result(second, _window_result(tok, "jumps over"))
    file.on_result(third, _window_result(tok, "the lazy dog"))
    assert file.next_jobs() == [] and file.done
    assert file.pieces[0].machine.budget is file.pieces[2].machine.budget


def test_spent_allowance_ends_the_input(tiny_en):
    tok = tiny_en.tokenizer
    noise = np.random.default_rng(1).normal(0, 0.1, 16000 * 70).astype(np.float32)
    machine = LongFormTranscription(tiny_en, noise, TranscriptionParams(max_completion_tokens=5), "s")
    job = machine.next_job()
    assert job.params.max_new_tokens == 5
    tokens = [tok.timestamp_begin, *tok.encode(" the quick brown fox")][:5]  # cut at the limit, no closing pair
    machine.on_result(job, JobResult(tokens, -0.5, 0.01))
    assert machine.next_job() is None and machine.done  # 40 s of audio left, but no tokens
    assert machine.result().text == tok.decode(tokens).strip()
