"""Typed wrappers over the C++/CUDA ops of vllm_whisper._C (torch.ops.vllm_whisper.*), with torch fallbacks.

Each wrapper runs the compiled op when the extension is loaded and has a kernel for the tensors' device (C++ on
the CPU always; CUDA where the extension was built with its CUDA kernels), and otherwise the torch reference
beside it, which computes the same thing. `HAS_C_EXTENSION` says whether the extension loaded and
`backend()` says which path runs where (and why the extension is missing, if it is). Build the extension with
`bash scripts/build_ext.sh` (scripts/bootstrap.sh does); set VLLM_WHISPER_DISABLE_C_EXTENSION=1 to force the
torch paths.

Ops:
  reshape_and_cache        self-attention K/V of new tokens into the paged cache (16-token blocks)
  reshape_and_cache_cross  a window's cross-attention K/V (1500 frames) into its slot
  apply_whisper_logits_rules / apply_whisper_logits_rules_
                           Whisper's logits rules for a batch (suppress blank, suppress tokens, the timestamp
                           rules, the logsumexp rule) in one call, with no host sync
  quantize_rows_int8 / dequantize_int8_rows
                           --quantization int8 on the CPU: a float32 matrix as int8 with one scale per row, and an
                           int32 product back to float32 (row scale x column scale + bias), each in one pass
Cache layouts are engine/kv_cache.py's; the rules are decoding/logits_rules.py's (batched: engine/sampler.py).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from vllm_whisper.decoding.logits_rules import LogitsRules

C_EXTENSION_ERROR: str | None = None
HAS_CUDA_KERNELS = False
if os.environ.get("VLLM_WHISPER_DISABLE_C_EXTENSION", "0") not in ("", "0"):
    HAS_C_EXTENSION = False
    C_EXTENSION_ERROR = "disabled by VLLM_WHISPER_DISABLE_C_EXTENSION"
else:
    try:
        import vllm_whisper._C as _C  # registers torch.ops.vllm_whisper.*

        HAS_C_EXTENSION = True
        HAS_CUDA_KERNELS = bool(getattr(_C, "CUDA_KERNELS", 0))
    except Exception as exc:  # not built, or built for another torch (undefined symbols)
        HAS_C_EXTENSION = False
        C_EXTENSION_ERROR = f"{type(exc).__name__}: {exc}"

_FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16)
_NEG_INF = float("-inf")


def backend() -> str:
    """Which implementation the wrappers use, for logs and test reports."""
    if not HAS_C_EXTENSION:
        return f"torch fallback (vllm_whisper._C not loaded: {C_EXTENSION_ERROR}; build it with scripts/build_ext.sh)"
    cuda = "CUDA kernels" if HAS_CUDA_KERNELS else "no CUDA kernels: CUDA tensors use the torch fallback"
    return f"vllm_whisper._C (C++ CPU ops; {cuda})"


def _use_c(*tensors: Tensor) -> bool:
    """Whether the compiled op has a kernel for these tensors (meta/fake tensors count: torch.compile)."""
    if not HAS_C_EXTENSION:
        return False
    device = tensors[0].device.type
    if device == "cuda" and not HAS_CUDA_KERNELS:
        return False
    if device not in ("cpu", "cuda", "meta"):
        return False
    return all(t.dtype in _FLOAT_TYPES for t in tensors)


# --- K/V cache writes -------------------------------------------------------------------------------------------

def reshape_and_cache(key: Tensor, value: Tensor, key_cache: Tensor, value_cache: Tensor,
                      slot_mapping: Tensor) -> None:
    """Write new tokens' self-attention K/V into the paged cache, in place.

    key, value: (..., heads, head_dim), any leading shape (e.g. (batch, tokens) as `k.transpose(1, 2)` of the
        decoder's (batch, heads, tokens, head_dim)); converted to the cache dtype.
    key_cache, value_cache: (num_blocks, block_size, heads, head_dim), contiguous (engine/kv_cache.py).
    slot_mapping: (...) flat slots, block * block_size + offset, matching key's leading shape; negative = skip
        (padding), as PagedAttentionMetadata.slot_mapping.
    """
    heads, head_dim = key_cache.shape[-2:]
    if key.shape[-2:] != (heads, head_dim) or value.shape != key.shape or key.shape[:-2] != slot_mapping.shape:
        raise ValueError(f"reshape_and_cache: key {tuple(key.shape)} / value {tuple(value.shape)} / slot_mapping "
                         f"{tuple(slot_mapping.shape)} do not fit a cache of {heads} heads x {head_dim}")
    key = key.reshape(-1, heads, head_dim)
    value = value.reshape(-1, heads, head_dim)
    slots = slot_mapping.reshape(-1).long()
    if _use_c(key, value, key_cache, value_cache) and key_cache.is_contiguous() and value_cache.is_contiguous():
        torch.ops.vllm_whisper.reshape_and_cache(key, value, key_cache, value_cache, slots)
    else:
        reshape_and_cache_torch(key, value, key_cache, value_cache, slots)


def reshape_and_cache_torch(key: Tensor, value: Tensor, key_cache: Tensor, value_cache: Tensor,
                            slot_mapping: Tensor) -> None:
    """The torch reference of reshape_and_cache (what attention/torch_paged.py does): key (tokens, heads, dim)."""
    heads, head_dim = key_cache.shape[-2:]
    flat_k = key_cache.view(-1, heads, head_dim)
    flat_v = value_cache.view(-1, heads, head_dim)
    write = slot_mapping >= 0
    slots = slot_mapping[write]
    flat_k[slots] = key[write].to(flat_k.dtype)
    flat_v[slots] = value[write].to(flat_v.dtype)


def reshape_and_cache_cross(key: Tensor, value: Tensor, key_cache: Tensor, value_cache: Tensor,
                            slots: Tensor | Sequence[int]) -> None:
    """Write windows' cross-attention K/V into their slots, in place.

    key, value: (batch, heads, frames, head_dim) as WhisperModel.compute_cross_kv returns them for one layer
        (strided views are fine: no copy); converted to the cache dtype.
    key_cache, value_cache: (num_slots, heads, frames, head_dim), contiguous (engine/kv_cache.py).
    slots: (batch,) each window's slot; negative = skip.
    """
    if not isinstance(slots, Tensor):
        slots = torch.tensor(list(slots), dtype=torch.long)
    slots = slots.to(device=key_cache.device, dtype=torch.long)
    if _use_c(key, value, key_cache, value_cache) and key_cache.is_contiguous() and value_cache.is_contiguous():
        torch.ops.vllm_whisper.reshape_and_cache_cross(key, value, key_cache, value_cache, slots)
    else:
        reshape_and_cache_cross_torch(key, value, key_cache, value_cache, slots)


def reshape_and_cache_cross_torch(key: Tensor, value: Tensor, key_cache: Tensor, value_cache: Tensor,
                                  slots: Tensor) -> None:
    """The torch reference of reshape_and_cache_cross (what engine/model_runner.py does after the encoder)."""
    write = slots >= 0
    key_cache[slots[write]] = key[write].to(key_cache.dtype)
    value_cache[slots[write]] = value[write].to(value_cache.dtype)


# --- Whisper logits rules ---------------------------------------------------------------------------------------

@dataclass
class LogitsRulesBatch:
    """The rules and histories of a batch as tensors (the op's inputs); build with pack_logits_rules.

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
        return (self.output_tokens, self.output_lens, self.row_config, self.suppress_tokens,
                self.begin_suppress_tokens)


_packed_rules: dict[LogitsRules, tuple[tuple[int, ...], Tensor, Tensor]] = {}


def _rules_tensors(rules: LogitsRules) -> tuple[tuple[int, ...], Tensor, Tensor]:
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
    """Tensors for apply_whisper_logits_rules_ from per-row rules and histories (tokens sampled so far).

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
    config = torch.tensor([p[0] for p in packed], dtype=torch.long).reshape(batch, 6)
    suppress = _pad_rows([p[1] for p in packed]) if batch else torch.empty(0, 0, dtype=torch.long)
    begin = _pad_rows([p[2] for p in packed]) if batch else torch.empty(0, 0, dtype=torch.long)
    parts = [tokens, lens, config, suppress, begin]
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cpu":  # one host-to-device copy for all five
        flat_all = torch.cat([p.reshape(-1) for p in parts]).to(device, non_blocking=True)
        parts = [chunk.view(p.shape) for chunk, p in zip(flat_all.split([p.numel() for p in parts]), parts)]
    return LogitsRulesBatch(*parts)


def apply_whisper_logits_rules_(logits: Tensor, batch: LogitsRulesBatch) -> Tensor:
    """Apply Whisper's logits rules to (batch, vocab) logits in place; returns `logits`."""
    if _use_c(logits) and (logits.shape[-1] <= 1 or logits.stride(-1) == 1):
        torch.ops.vllm_whisper.apply_whisper_logits_rules(logits, *batch.as_args())
    else:
        apply_whisper_logits_rules_torch_(logits, batch)
    return logits


def apply_whisper_logits_rules(logits: Tensor, rules: Sequence[LogitsRules],
                               histories: Sequence[Sequence[int]]) -> Tensor:
    """Drop-in for engine/sampler.py apply_rules: a copy of `logits` with each row's forbidden tokens at -inf.

    Same -inf positions as apply_rules, other values untouched. The logsumexp rule compares
    logsumexp(timestamp logits) with the best text logit (the reference subtracts the same log-normaliser from
    both sides), so only a tie within float rounding could be decided differently. Suppress ids outside the
    vocabulary are ignored (the reference would raise).
    """
    if not _use_c(logits):
        from vllm_whisper.engine.sampler import apply_rules  # lazy: the sampler may import this module

        return apply_rules(logits, list(rules), [list(h) for h in histories])
    out = logits.clone(memory_format=torch.contiguous_format)
    packed = pack_logits_rules(rules, histories, logits.device)
    torch.ops.vllm_whisper.apply_whisper_logits_rules(out, *packed.as_args())
    return out


def apply_whisper_logits_rules_torch_(logits: Tensor, batch: LogitsRulesBatch) -> Tensor:
    """The rules on packed tensors in plain torch (vectorised, no host sync): the fallback of
    apply_whisper_logits_rules_ and a second reference for the compiled op."""
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


# --- int8 matrix products (CPU) ---------------------------------------------------------------------------------

def _use_c_int8(*tensors: Tensor) -> bool:
    return HAS_C_EXTENSION and all(t.device.type == "cpu" for t in tensors)


def quantize_rows_int8(x: Tensor) -> tuple[Tensor, Tensor]:
    """float32 (rows, features) -> (int8 values in [-127, 127], float32 scales (rows, 1)), scale = max |row| / 127
    (at least 1e-12 / 127), values rounded half to even."""
    if x.dim() != 2 or x.dtype != torch.float32:
        raise ValueError(f"quantize_rows_int8 takes a 2-D float32 matrix, got {x.dtype} {tuple(x.shape)}")
    if _use_c_int8(x):
        return torch.ops.vllm_whisper.quantize_rows_int8(x)
    return quantize_rows_int8_torch(x)


def quantize_rows_int8_torch(x: Tensor) -> tuple[Tensor, Tensor]:
    """The torch reference of quantize_rows_int8."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
    return torch.round(x / scale).to(torch.int8), scale


def dequantize_int8_rows(acc: Tensor, row_scales: Tensor, col_scales: Tensor, bias: Tensor | None = None) -> Tensor:
    """int32 (rows, cols) product of int8 matrices -> float32 acc * row_scales[r] * col_scales[c] (+ bias[c])."""
    if acc.dim() != 2 or acc.dtype != torch.int32:
        raise ValueError(f"dequantize_int8_rows takes a 2-D int32 product, got {acc.dtype} {tuple(acc.shape)}")
    if _use_c_int8(acc, row_scales, col_scales):
        return torch.ops.vllm_whisper.dequantize_int8_rows(acc, row_scales, col_scales, bias)
    return dequantize_int8_rows_torch(acc, row_scales, col_scales, bias)


def dequantize_int8_rows_torch(acc: Tensor, row_scales: Tensor, col_scales: Tensor,
                               bias: Tensor | None = None) -> Tensor:
    """The torch reference of dequantize_int8_rows (same order of operations: bit-identical results)."""
    out = acc.float().mul_(row_scales.reshape(-1, 1)).mul_(col_scales.reshape(1, -1))
    return out if bias is None else out.add_(bias)


# --- torch.compile: shapes-only (fake) implementations ---------------------------------------------------------

if HAS_C_EXTENSION:

    @torch.library.register_fake("vllm_whisper::reshape_and_cache")
    def _reshape_and_cache_fake(key, value, key_cache, value_cache, slot_mapping) -> None:
        torch._check(key.dim() == 3 and value.dim() == 3 and slot_mapping.dim() == 1)
        torch._check(key_cache.dim() == 4 and value_cache.dim() == 4)

    @torch.library.register_fake("vllm_whisper::reshape_and_cache_cross")
    def _reshape_and_cache_cross_fake(key, value, key_cache, value_cache, slots) -> None:
        torch._check(key.dim() == 4 and value.dim() == 4 and slots.dim() == 1)
        torch._check(key_cache.dim() == 4 and value_cache.dim() == 4)

    @torch.library.register_fake("vllm_whisper::apply_whisper_logits_rules")
    def _apply_whisper_logits_rules_fake(logits, output_tokens, output_lens, row_config, suppress_tokens,
                                         begin_suppress_tokens) -> None:
        torch._check(logits.dim() == 2 and output_tokens.dim() == 2 and row_config.dim() == 2)

    @torch.library.register_fake("vllm_whisper::quantize_rows_int8")
    def _quantize_rows_int8_fake(x):
        torch._check(x.dim() == 2)
        return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0], 1))

    @torch.library.register_fake("vllm_whisper::dequantize_int8_rows")
    def _dequantize_int8_rows_fake(acc, row_scales, col_scales, bias):
        torch._check(acc.dim() == 2)
        return acc.new_empty(acc.shape, dtype=torch.float32)
