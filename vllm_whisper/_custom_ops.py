"""Typed wrappers over the C++/CUDA ops of vllm_whisper._C (torch.ops.vllm_whisper.*), with torch fallbacks.

Each wrapper runs the compiled op when the extension is loaded and has a kernel for the tensors' device (C++ on
the CPU always; CUDA where the extension was built with its CUDA kernels), and otherwise a torch version that
computes the same thing (beside it here; for the logits rules, sampling/batched.py). `HAS_C_EXTENSION` says
whether the extension loaded and `backend()` says which path runs where (and why the extension is missing, if it
is). Build the extension with `bash scripts/build_ext.sh` (scripts/bootstrap.sh does); set
VLLM_WHISPER_DISABLE_C_EXTENSION=1 to force the torch paths.

Ops:
  reshape_and_cache        self-attention K/V of new tokens into the paged cache (16-token blocks)
  reshape_and_cache_cross  a window's cross-attention K/V (1500 frames) into its slot
  apply_whisper_logits_rules / apply_whisper_logits_rules_
                           Whisper's logits rules for a batch (suppress blank, suppress tokens, the timestamp
                           rules, the logsumexp rule) in one call, with no host sync
  cross_attention          decoder queries over each row's cross-attention slot (CPU; float32 or bfloat16 cache,
                           float32 math)
  quantize_rows_int8 / dequantize_int8_rows
                           --quantization int8 on the CPU: a float32 matrix as int8 with one scale per row, and an
                           int32 product back to float32 (row scale x column scale + bias), each in one pass
Cache layouts are attention/kv_cache_layout.py's; the rules and their torch versions are in sampling/ (the op's
inputs: sampling/packed.py, its fallback: sampling/batched.py, the per-row oracle: sampling/reference.py).
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor

from vllm_whisper.sampling.batched import apply_rules, apply_rules_packed_
from vllm_whisper.sampling.packed import LogitsRulesBatch, pack_logits_rules
from vllm_whisper.sampling.rules import LogitsRules

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
    key_cache, value_cache: (num_blocks, block_size, heads, head_dim), contiguous (attention/kv_cache_layout.py).
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
    key_cache, value_cache: (num_slots, heads, frames, head_dim), contiguous (attention/kv_cache_layout.py).
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

def apply_whisper_logits_rules_(logits: Tensor, batch: LogitsRulesBatch) -> Tensor:
    """Apply Whisper's logits rules to (batch, vocab) logits in place; returns `logits`."""
    if _use_c(logits) and (logits.shape[-1] <= 1 or logits.stride(-1) == 1):
        torch.ops.vllm_whisper.apply_whisper_logits_rules(logits, *batch.as_args())
    else:
        apply_rules_packed_(logits, batch)
    return logits


def apply_whisper_logits_rules(logits: Tensor, rules: Sequence[LogitsRules],
                               histories: Sequence[Sequence[int]]) -> Tensor:
    """A copy of `logits` with each row's forbidden tokens at -inf: the compiled op, else sampling/batched.py.

    Same -inf positions as the per-row reference (sampling/reference.py), other values untouched. The logsumexp
    rule compares logsumexp(timestamp logits) with the best text logit (the reference subtracts the same
    log-normaliser from both sides), so only a tie within float rounding could be decided differently. Suppress
    ids outside the vocabulary are ignored (the reference would raise).
    """
    if not _use_c(logits):
        return apply_rules(logits, rules, histories)
    out = logits.clone(memory_format=torch.contiguous_format)
    packed = pack_logits_rules(rules, histories, logits.device)
    torch.ops.vllm_whisper.apply_whisper_logits_rules(out, *packed.as_args())
    return out


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

    if hasattr(torch.ops.vllm_whisper, "cross_attention"):  # an extension built before the op lacks it
        @torch.library.register_fake("vllm_whisper::cross_attention")
        def _cross_attention_fake(q, key_cache, value_cache, slots, lens, scale):
            torch._check(q.dim() == 4 and key_cache.dim() == 4 and slots.dim() == 1 and lens.dim() == 1)
            return q.new_empty(q.shape)


# --- cross attention (CPU) --------------------------------------------------------------------------------------

def has_cpu_cross_attention() -> bool:
    """Whether the compiled CPU cross-attention kernel is loaded (a bfloat16 cache is only a win with it)."""
    return HAS_C_EXTENSION and hasattr(torch.ops.vllm_whisper, "cross_attention")


def cross_attention(q: Tensor, key_cache: Tensor, value_cache: Tensor, slots: Sequence[int], lens: Sequence[int],
                    scale: float | None = None) -> Tensor:
    """Row b of q (batch, heads, tokens, head_dim) attends over slot slots[b] of the cross caches (num_slots, heads,
    frames, head_dim), its first lens[b] frames; the result has q's dtype.

    The C++ kernel runs for float32 queries on the CPU over float32 or bfloat16 caches (bfloat16 widened to float32
    as it is read); anything else runs one SDPA call per row over the cache converted to q's dtype.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if (q.device.type == "cpu" and q.dtype == torch.float32 and key_cache.dtype in (torch.float32, torch.bfloat16)
            and key_cache.is_contiguous() and value_cache.is_contiguous() and has_cpu_cross_attention()):
        slot_t = torch.tensor(list(slots), dtype=torch.long)
        len_t = torch.tensor(list(lens), dtype=torch.long)
        return torch.ops.vllm_whisper.cross_attention(q, key_cache, value_cache, slot_t, len_t, float(scale))
    return cross_attention_torch(q, key_cache, value_cache, slots, lens, scale)


def cross_attention_torch(q: Tensor, key_cache: Tensor, value_cache: Tensor, slots: Sequence[int],
                          lens: Sequence[int], scale: float) -> Tensor:
    """The torch path of cross_attention: one SDPA call per row."""
    import torch.nn.functional as F

    return torch.cat([
        F.scaled_dot_product_attention(q[b:b + 1], key_cache[s:s + 1, :, :n].to(q.dtype),
                                       value_cache[s:s + 1, :, :n].to(q.dtype), scale=scale)
        for b, (s, n) in enumerate(zip(slots, lens))
    ])
