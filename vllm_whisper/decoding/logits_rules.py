"""Whisper's logits rules for one sequence, exactly as the reference decoder applies them.

Order: suppress blank (first sampled token only), suppress tokens, then the timestamp rules: no
<|notimestamps|> token; timestamps come in pairs; they never go back in time; the first sampled token is a
timestamp no later than `max_initial_timestamp`; and when the total probability of all timestamps beats every
single text token, a timestamp must be sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LogitsRules:
    """The constants the rules need for one vocabulary and one request."""

    eot: int
    no_timestamps: int
    timestamp_begin: int
    suppress_tokens: tuple[int, ...]
    begin_suppress_tokens: tuple[int, ...]
    timestamps: bool
    suppress_blank: bool = True
    max_initial_timestamp_index: int | None = 50  # 1.0 s

    def apply(self, logits: Tensor, generated: list[int]) -> Tensor:
        """Return a copy of 1-D `logits` with forbidden tokens at -inf; `generated` excludes the prompt."""
        logits = logits.clone()
        if self.suppress_blank and not generated:
            logits[list(self.begin_suppress_tokens)] = -torch.inf
        if self.suppress_tokens:
            logits[list(self.suppress_tokens)] = -torch.inf
        if self.timestamps:
            self._apply_timestamp_rules(logits, generated)
        return logits

    def _apply_timestamp_rules(self, logits: Tensor, generated: list[int]) -> None:
        ts = self.timestamp_begin
        logits[self.no_timestamps] = -torch.inf
        last_was_timestamp = len(generated) >= 1 and generated[-1] >= ts
        penultimate_was_timestamp = len(generated) < 2 or generated[-2] >= ts
        if last_was_timestamp:
            if penultimate_was_timestamp:  # a pair just closed: the next token must be text (or end)
                logits[ts:] = -torch.inf
            else:  # an opening timestamp: the next token must be a timestamp (or end)
                logits[: self.eot] = -torch.inf
        timestamps = [t for t in generated if t >= ts]
        if timestamps:
            # Timestamps never decrease; after a closed pair they must strictly increase.
            floor = timestamps[-1] if last_was_timestamp and not penultimate_was_timestamp else timestamps[-1] + 1
            logits[ts:floor] = -torch.inf
        if not generated:
            logits[:ts] = -torch.inf
            if self.max_initial_timestamp_index is not None:
                logits[ts + self.max_initial_timestamp_index + 1:] = -torch.inf
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        timestamp_logprob = torch.logsumexp(logprobs[ts:], dim=-1)
        max_text_logprob = logprobs[:ts].max()
        if timestamp_logprob > max_text_logprob:
            logits[:ts] = -torch.inf
