"""The batched sampler's Whisper rules equal the per-row reference on random logits and random histories."""

from __future__ import annotations

import random

import pytest
import torch

from vllm_whisper.engine.sampler import SamplingParams, sample
from vllm_whisper.sampling.batched import apply_rules
from vllm_whisper.sampling.reference import apply_rules_row
from vllm_whisper.sampling.rules import LogitsRules

EOT, NO_TS, TS, VOCAB = 50256, 50362, 50363, 51864


def random_history(rng: random.Random) -> list[int]:
    history: list[int] = []
    stamp = rng.randrange(0, 40)
    for _ in range(rng.randrange(0, 12)):
        kind = rng.random()
        if kind < 0.35:
            stamp += rng.randrange(0, 30)
            history.append(TS + min(stamp, 1500))
        else:
            history.append(rng.randrange(0, EOT))
    return history


def make_rules(rng: random.Random) -> LogitsRules:
    return LogitsRules(
        EOT, NO_TS, TS, suppress_tokens=tuple(rng.sample(range(EOT), 20)), begin_suppress_tokens=(220, EOT),
        timestamps=rng.random() < 0.7, suppress_blank=rng.random() < 0.8,
        max_initial_timestamp_index=rng.choice([None, 0, 50]),
    )


@pytest.mark.parametrize("seed", range(5))
def test_batched_rules_equal_reference(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    batch = 24
    rules = [make_rules(rng) for _ in range(batch)]
    histories = [random_history(rng) for _ in range(batch)]
    logits = torch.randn(batch, VOCAB) * 3
    # Make timestamps competitive in some rows so the logsumexp rule fires both ways.
    for row in range(0, batch, 3):
        logits[row, TS:] += rng.uniform(-2, 4)
    batched = apply_rules(logits, rules, histories)
    for row in range(batch):
        expected = apply_rules_row(rules[row], logits[row], histories[row])
        assert torch.equal(torch.isfinite(batched[row]), torch.isfinite(expected)), row
        finite = torch.isfinite(expected)
        assert torch.equal(batched[row][finite], expected[finite])


def test_greedy_and_seeded_sampling():
    rules = LogitsRules(EOT, NO_TS, TS, (), (), timestamps=False, suppress_blank=False)
    logits = torch.randn(3, VOCAB)
    greedy = SamplingParams(rules)
    hot = SamplingParams(rules, temperature=1.0, top_k=50, seed=7)
    out = sample(logits, [greedy, hot, hot], [None, torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)])
    assert out.tokens[0] == int(logits[0].argmax())
    assert out.logprobs[0] == pytest.approx(float(torch.log_softmax(logits[0], -1).max()), abs=1e-5)
    top50 = set(torch.topk(logits[1], 50).indices.tolist())
    assert out.tokens[1] in top50
    again = sample(logits, [greedy, hot, hot], [None, torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)])
    assert again.tokens == out.tokens


def test_top_p_keeps_the_nucleus():
    rules = LogitsRules(EOT, NO_TS, TS, (), (), timestamps=False, suppress_blank=False)
    logits = torch.full((1, VOCAB), -30.0)
    logits[0, 10], logits[0, 11], logits[0, 12] = 5.0, 4.0, 0.0
    params = SamplingParams(rules, temperature=1.0, top_p=0.5)
    seen = {sample(logits, [params], [torch.Generator().manual_seed(s)]).tokens[0] for s in range(40)}
    assert seen == {10}


def test_invalid_sampling_params():
    rules = LogitsRules(EOT, NO_TS, TS, (), (), timestamps=False)
    for kwargs in ({"temperature": -1}, {"top_p": 0.0}, {"top_k": -2}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(rules, **kwargs)


def test_min_p_and_top_k_of_one_leave_only_the_most_likely_token():
    rules = LogitsRules(EOT, NO_TS, TS, (), (), timestamps=False, suppress_blank=False)
    torch.manual_seed(0)
    logits = torch.randn(4, VOCAB)
    params = [SamplingParams(rules, temperature=1.0, min_p=1.0), SamplingParams(rules, temperature=1.0, top_k=1),
              SamplingParams(rules, temperature=1.0, min_p=0.0), SamplingParams(rules, temperature=1.0)]
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    out = sample(logits, params, generators)
    best = logits.argmax(dim=-1).tolist()
    assert out.tokens[:2] == best[:2]
    assert out.tokens[2:] != best[2:]  # plain sampling over 51k near-uniform tokens does not pick the argmax
