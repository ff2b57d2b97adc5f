"""A batch's logits rules and token histories as tensors: the inputs of the batched rules (batched.py) and of the
C++/CUDA op `apply_whisper_logits_rules` (the layout csrc/cpu/logits_ops.cpp and csrc/cuda/logits_kernels.cu read).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from vllm_whisper.sampling.rules import LogitsRules

ROW_CONFIG_COLUMNS = 6


@dataclass
class LogitsRulesBatch:
    """The rules and histories of a batch as tensors; build with pack_logits_rules.

    output_tokens: (batch, max_len) int64 tokens sampled so far (prompt excluded), -1 padded.
    output_lens: (batch,) int64 valid tokens per row.
    row_config: (batch, 6) int64: eot, no_timestamps, timestamp_begin, timestamps (0/1), suppress_blank (0/1),
        max_initial_timestamp_index (-1: no limit).
    suppress_tokens, begin_suppress_tokens: (batch, k) int64, -1 padded (ids outside the vocab are ignored).
    """

    output_tokens: Tensor
    output_lens: Tensor
    row_config: Tensor
    suppress_tokens: Tensor
    begin_suppress_tokens: Tensor

    def as_args(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The op's tensor arguments after `logits`, in schema order."""
        return (self.output_tokens, self.output_lens, self.row_config, self.suppress_tokens,
                self.begin_suppress_tokens)


_packed_rules: dict[LogitsRules, tuple[tuple[int, ...], Tensor, Tensor]] = {}


def _rules_tensors(rules: LogitsRules) -> tuple[tuple[int, ...], Tensor, Tensor]:
    """One request's row_config and suppress lists, cached per rules object (requests share them)."""
    packed = _packed_rules.get(rules)
    if packed is None:
        if len(_packed_rules) >= 64:  # many distinct per-request suppress lists: start over rather than grow
            _packed_rules.clear()
        initial = rules.max_initial_timestamp_index
        config = (rules.eot, rules.no_timestamps, rules.timestamp_begin, int(rules.timestamps),
                  int(rules.suppress_blank), -1 if initial is None else int(initial))
        packed = (config, torch.tensor(rules.suppress_tokens, dtype=torch.long).reshape(-1),
                  torch.tensor(rules.begin_suppress_tokens, dtype=torch.long).reshape(-1))
        _packed_rules[rules] = packed
    return packed


def _pad_rows(rows: list[Tensor]) -> Tensor:
    if all(r is rows[0] for r in rows):  # one rules object for the whole batch: a stride-0 view, no copy
        return rows[0][None].expand(len(rows), -1)
    width = max(r.numel() for r in rows)
    out = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :r.numel()] = r
    return out


def pack_logits_rules(rules: Sequence[LogitsRules], histories: Sequence[Sequence[int]],
                      device: torch.device | str | None = None) -> LogitsRulesBatch:
    """Tensors for the batched rules from per-row rules and histories (tokens sampled so far).

    Built on the CPU and moved to `device` in one copy (no device-to-host sync). An engine that keeps its
    sampled tokens on the device can build a LogitsRulesBatch directly instead.
    """
    if len(rules) != len(histories):
        raise ValueError(f"{len(rules)} rules for {len(histories)} histories")
    batch = len(rules)
    packed = [_rules_tensors(r) for r in rules]
    lens = torch.tensor([len(h) for h in histories], dtype=torch.long)
    width = int(lens.max()) if batch else 0
    tokens = torch.full((batch, width), -1, dtype=torch.long)
    flat = torch.tensor(list(itertools.chain.from_iterable(histories)), dtype=torch.long)
    if flat.numel():
        rows = torch.repeat_interleave(torch.arange(batch), lens)
        starts = torch.repeat_interleave(lens.cumsum(0) - lens, lens)
        tokens[rows, torch.arange(flat.numel()) - starts] = flat
    config = torch.tensor([p[0] for p in packed], dtype=torch.long).reshape(batch, ROW_CONFIG_COLUMNS)
    suppress = _pad_rows([p[1] for p in packed]) if batch else torch.empty(0, 0, dtype=torch.long)
    begin = _pad_rows([p[2] for p in packed]) if batch else torch.empty(0, 0, dtype=torch.long)
    parts = [tokens, lens, config, suppress, begin]
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cpu":  # one host-to-device copy for all five
        flat_all = torch.cat([p.reshape(-1) for p in parts]).to(device, non_blocking=True)
        parts = [chunk.view(p.shape) for chunk, p in zip(flat_all.split([p.numel() for p in parts]), parts)]
    return LogitsRulesBatch(*parts)
