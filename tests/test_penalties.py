"""vLLM's repetition, frequency and presence penalties on ruled logits equal a straightforward per-row reference,
leave special and timestamp tokens alone, and change nothing at their defaults."""

from __future__ import annotations

import random

import pytest
import torch

from vllm_whisper.engine.penalties import apply_penalties
from vllm_whisper.engine.sampler import SamplingParams, sample
from vllm_whisper.sampling.rules import LogitsRules

EOT, NO_TS, TS, VOCAB = 50256, 50362, 50363, 51864
RULES = LogitsRules(EOT, NO_TS, TS, (), (), timestamps=True, suppress_blank=False)


def reference_row(logits: list[float], prompt: list[int], output: list[int], repetition: float, frequency: float,
                  presence: float) -> list[float]:
    """The penalties token by token, as vLLM documents them, on text tokens (ids below end-of-text) only."""
    out = list(logits)
    for token in range(EOT):
        count = sum(1 for t in output if t == token)
        if count or token in prompt:
            out[token] = out[token] / repetition if out[token] > 0 else out[token] * repetition
        out[token] -= frequency * count
        if count:
            out[token] -= presence
    return out


def random_tokens(rng: random.Random, n: int) -> list[int]:
    """Mostly a few recurring text tokens, plus specials and timestamps that must not count."""
    common = [rng.randrange(EOT) for _ in range(6)]
    return [rng.choice(common) if rng.random() < 0.6 else rng.choice([EOT + 1, NO_TS, TS + rng.randrange(1500),
                                                                      rng.randrange(EOT)]) for _ in range(n)]


@pytest.mark.parametrize("seed", range(3))
def test_penalties_equal_the_per_row_reference(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    rows = 6
    logits = torch.randn(rows, VOCAB) * 4
    logits[0, 100] = -torch.inf  # a token the rules forbade stays forbidden
    params = [SamplingParams(RULES, repetition_penalty=rng.choice([1.0, 0.7, 1.3, 2.0]),
                             frequency_penalty=rng.uniform(-2, 2), presence_penalty=rng.uniform(-2, 2))
              for _ in range(rows - 1)] + [SamplingParams(RULES)]  # the last row asks for nothing
    prompts = [random_tokens(rng, rng.randrange(0, 20)) + [100] for _ in range(rows)]
    outputs = [random_tokens(rng, rng.randrange(0, 30)) + [100] for _ in range(rows)]
    got = apply_penalties(logits, params, prompts, outputs)
    for row in range(rows):
        p = params[row]
        expected = torch.tensor(reference_row(logits[row].tolist(), prompts[row], outputs[row], p.repetition_penalty,
                                              p.frequency_penalty, p.presence_penalty))
        assert torch.allclose(got[row], expected, rtol=1e-5, atol=1e-5, equal_nan=False), row
        assert torch.equal(got[row, EOT:], logits[row, EOT:])  # specials and timestamps untouched
    assert got[0, 100] == -torch.inf
    assert torch.equal(got[rows - 1], logits[rows - 1])


def test_defaults_cost_nothing_and_penalties_steer_greedy_choice():
    logits = torch.zeros(2, VOCAB)
    logits[:, 7] = 3.0
    logits[:, 8] = 2.5
    plain = [SamplingParams(RULES), SamplingParams(RULES)]
    assert apply_penalties(logits, plain, [[7], [7]], [[7], [7]]) is logits  # the fast path: the same tensor
    penalised = [SamplingParams(RULES, repetition_penalty=1.5), SamplingParams(RULES, presence_penalty=1.0)]
    scores = apply_penalties(logits, penalised, [[7], []], [[], [7, 7]])
    assert sample(scores, penalised, [None, None]).tokens == [8, 8]  # 3 / 1.5 = 2 and 3 - 1 = 2 fall below 2.5
    assert sample(logits, plain, [None, None]).tokens == [7, 7]
