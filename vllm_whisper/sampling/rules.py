"""LogitsRules: the per-request constants of Whisper's logits rules.

The rules, in order: suppress blank (first sampled token only), suppress tokens, then the timestamp rules: no
<|notimestamps|> token; timestamps come in pairs; they never go back in time; the first sampled token is a
timestamp no later than `max_initial_timestamp_index`; and when the total probability of all timestamps beats
every single text token, a timestamp must be sampled. reference.py applies them to one row, batched.py to a batch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LogitsRules:
    """The constants the rules need for one vocabulary and one request (hashable: caches key on it)."""

    eot: int
    no_timestamps: int
    timestamp_begin: int
    suppress_tokens: tuple[int, ...]
    begin_suppress_tokens: tuple[int, ...]
    timestamps: bool
    suppress_blank: bool = True
    max_initial_timestamp_index: int | None = 50  # 1.0 s
