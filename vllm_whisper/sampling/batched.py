"""Whisper's logits rules for a (batch, vocab) tensor at once, in plain torch: vectorised, no host sync.

The one torch implementation of the batched rules: the fallback of the C++/CUDA op behind
_custom_ops.apply_whisper_logits_rules (no extension, or CUDA tensors without CUDA kernels), held equal to the
per-row reference (reference.py) by tests/test_sampler.py and tests/test_custom_ops.py.
The logsumexp rule compares logsumexp(timestamp logits) with the best text logit: the reference's log-softmax
subtracts the same normaliser from both sides, so only a tie within float rounding could be decided differently.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from vllm_whisper.sampling.packed import LogitsRulesBatch, pack_logits_rules
from vllm_whisper.sampling.rules import LogitsRules

_NEG_INF = float("-inf")


def apply_rules(logits: Tensor, rules: Sequence[LogitsRules], histories: Sequence[Sequence[int]]) -> Tensor:
    """A copy of (batch, vocab) `logits` with each row's forbidden tokens at -inf; `histories` are the tokens
    sampled so far per row (prompt excluded). Suppress ids outside the vocabulary are ignored."""
    out = logits.clone(memory_format=torch.contiguous_format)
    return apply_rules_packed_(out, pack_logits_rules(rules, histories, logits.device))


def apply_rules_packed_(logits: Tensor, batch: LogitsRulesBatch) -> Tensor:
    """The rules on packed tensors, in place on (batch, vocab) `logits`; returns `logits`."""
    rows, vocab = logits.shape
    device = logits.device
    tokens, lens, config = batch.output_tokens, batch.output_lens, batch.row_config
    eot, no_ts, begin, ts_on, blank, max_initial = (c[:, None] for c in config.unbind(1))
    ts_on = ts_on.bool()
    col = torch.arange(vocab, device=device)[None, :]
    first = (lens == 0)[:, None]

    forbid = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=device)  # column `vocab` swallows ignored ids

    def mark(ids: Tensor, rows_on: Tensor) -> None:
        if ids.numel():
            ids = torch.where((ids >= 0) & (ids < vocab) & rows_on, ids, vocab)
            forbid.scatter_(1, ids, True)

    mark(batch.suppress_tokens, torch.ones_like(first))
    mark(batch.begin_suppress_tokens, first & blank.bool())
    forbid = forbid[:, :vocab]

    if tokens.shape[1] == 0:
        tokens = torch.full((rows, 1), -1, dtype=torch.long, device=device)
    pos = torch.arange(tokens.shape[1], device=device)[None, :]
    stamp = (pos < lens[:, None]) & (tokens >= begin)
    last = tokens.gather(1, (lens[:, None] - 1).clamp(min=0))
    penult = tokens.gather(1, (lens[:, None] - 2).clamp(min=0))
    last_ts = (lens[:, None] >= 1) & (last >= begin)
    penult_ts = (lens[:, None] < 2) | (penult >= begin)
    last_stamp_index = (stamp * (pos + 1)).amax(dim=1, keepdim=True) - 1  # -1: no timestamp yet
    last_stamp = tokens.gather(1, last_stamp_index.clamp(min=0))
    floor = torch.where(last_ts & ~penult_ts, last_stamp, last_stamp + 1)
    floor = torch.where(last_stamp_index >= 0, floor, begin)
    limit = torch.where(max_initial >= 0, begin + max_initial + 1, vocab)
    ts_forbid = col == no_ts
    ts_forbid |= last_ts & penult_ts & (col >= begin)
    ts_forbid |= last_ts & ~penult_ts & (col < eot)
    ts_forbid |= (col >= begin) & (col < floor)
    ts_forbid |= first & ((col < begin) | (col >= limit))
    logits.masked_fill_(forbid | (ts_forbid & ts_on), _NEG_INF)

    # The logsumexp rule, compared on the logits (both sides of the reference's log-softmax comparison carry the
    # same normaliser).
    is_ts = col >= begin
    values = logits.float()
    ts_mass = torch.logsumexp(values.masked_fill(~is_ts, _NEG_INF), dim=-1, keepdim=True)
    max_text = values.masked_fill(is_ts, _NEG_INF).amax(dim=-1, keepdim=True)
    logits.masked_fill_(ts_on & (ts_mass > max_text) & ~is_ts, _NEG_INF)
    return logits
