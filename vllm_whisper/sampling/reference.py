"""Whisper's logits rules for one sequence, exactly as the reference decoder applies them: the test oracle.

Plain and unbatched on purpose; batched.py and the C++/CUDA op are tested against it (tests/test_sampler.py,
tests/test_custom_ops.py). Production code applies the rules through _custom_ops.apply_whisper_logits_rules.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vllm_whisper.sampling.rules import LogitsRules


def apply_rules_row(rules: LogitsRules, logits: Tensor, generated: list[int]) -> Tensor:
    """A copy of 1-D `logits` with forbidden tokens at -inf; `generated` excludes the prompt."""
    logits = logits.clone()
    if rules.suppress_blank and not generated:
        logits[list(rules.begin_suppress_tokens)] = -torch.inf
    if rules.suppress_tokens:
        logits[list(rules.suppress_tokens)] = -torch.inf
    if rules.timestamps:
        _apply_timestamp_rules(rules, logits, generated)
    return logits


def _apply_timestamp_rules(rules: LogitsRules, logits: Tensor, generated: list[int]) -> None:
    ts = rules.timestamp_begin
    logits[rules.no_timestamps] = -torch.inf
    last_was_timestamp = len(generated) >= 1 and generated[-1] >= ts
    penultimate_was_timestamp = len(generated) < 2 or generated[-2] >= ts
    if last_was_timestamp:
        if penultimate_was_timestamp:  # a pair just closed: the next token must be text (or end)
            logits[ts:] = -torch.inf
        else:  # an opening timestamp: the next token must be a timestamp (or end)
            logits[: rules.eot] = -torch.inf
    timestamps = [t for t in generated if t >= ts]
    if timestamps:
        # Timestamps never decrease; after a closed pair they must strictly increase.
        floor = timestamps[-1] if last_was_timestamp and not penultimate_was_timestamp else timestamps[-1] + 1
        logits[ts:floor] = -torch.inf
    if not generated:
        logits[:ts] = -torch.inf
        if rules.max_initial_timestamp_index is not None:
            logits[ts + rules.max_initial_timestamp_index + 1:] = -torch.inf
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    timestamp_logprob = torch.logsumexp(logprobs[ts:], dim=-1)
    max_text_logprob = logprobs[:ts].max()
    if timestamp_logprob > max_text_logprob:
        logits[:ts] = -torch.inf
