"""Whisper's logits rules on hand-built logits (vocabulary of tiny.en: eot 50256, timestamps from 50363)."""

from __future__ import annotations

import torch

from vllm_whisper.sampling.reference import apply_rules_row
from vllm_whisper.sampling.rules import LogitsRules

EOT, NO_TS, TS = 50256, 50362, 50363
VOCAB = 51864


def rules(timestamps: bool = True, **kw) -> LogitsRules:
    return LogitsRules(EOT, NO_TS, TS, suppress_tokens=(1, 2), begin_suppress_tokens=(220, EOT),
                       timestamps=timestamps, **kw)


def allowed(logits: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(logits)


def test_suppression_and_blank_only_at_begin():
    out = apply_rules_row(rules(timestamps=False), torch.zeros(VOCAB), [])
    assert not allowed(out)[[1, 2, 220, EOT]].any() and allowed(out)[[3, 500]].all()
    later = apply_rules_row(rules(timestamps=False), torch.zeros(VOCAB), [500])
    assert allowed(later)[[220, EOT]].all() and not allowed(later)[[1, 2]].any()


def test_first_token_is_an_early_timestamp():
    out = allowed(apply_rules_row(rules(), torch.zeros(VOCAB), []))
    assert not out[:TS].any()
    assert out[TS:TS + 51].all() and not out[TS + 51:].any()  # at most 1.0 s
    assert not out[NO_TS]


def test_timestamps_come_in_pairs_and_never_go_back():
    likely_end = torch.zeros(VOCAB)
    likely_end[EOT] = 20.0  # keep end-of-text above the timestamp mass so the pairing rule alone is visible
    opening = allowed(apply_rules_row(rules(), likely_end, [TS + 10, 500, 600, TS + 60]))
    # After a lone closing timestamp, the next is its partner: a timestamp >= 60, or end of text.
    assert not opening[:EOT].any() and opening[EOT]
    assert not opening[TS:TS + 60].any() and opening[TS + 60:].all()
    closed = allowed(apply_rules_row(rules(), likely_end, [TS + 10, 500, TS + 60, TS + 60]))
    # After a closed pair: text (or end) only, no timestamps.
    assert closed[500] and closed[EOT] and not closed[TS:].any()
    text = allowed(apply_rules_row(rules(), torch.zeros(VOCAB), [TS + 10, 500, TS + 60, TS + 60, 700]))
    assert not text[TS:TS + 61].any() and text[TS + 61:].all()  # strictly after the last pair


def test_timestamp_mass_beats_any_text_token():
    logits = torch.full((VOCAB,), -10.0)
    logits[500] = 2.0  # best single text token
    logits[TS + 100:TS + 200] = 0.0  # 100 timestamps: log(100) + 0 > 2.0
    out = allowed(apply_rules_row(rules(), logits, [TS, 400]))
    assert not out[:TS].any()
    logits[500] = 6.0  # now the text token wins
    out = allowed(apply_rules_row(rules(), logits, [TS, 400]))
    assert out[500]
