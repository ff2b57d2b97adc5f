"""Fused store of the new tokens' K and V into the paged self-attention cache (one launch for both).

k, v are (batch, heads, T, head_dim) with any strides (the decoder's split_heads views); slot_mapping (batch, T)
gives each token's flat cache row (block * block_size + offset), -1 for padding tokens, which are skipped.
Values are cast to the cache dtype on the way in.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from vllm_whisper.kernels._common import check_device, next_power_of_2, patch_interpreter_for_numpy_2_4

patch_interpreter_for_numpy_2_4()


def store_kv_reference(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    """The oracle: indexed assignment into the flattened (slots, heads, head_dim) caches."""
    write = slot_mapping >= 0
    slots = slot_mapping[write].long()
    heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, heads, head_dim)[slots] = k.transpose(1, 2)[write].to(k_cache.dtype)
    v_cache.view(-1, heads, head_dim)[slots] = v.transpose(1, 2)[write].to(v_cache.dtype)


@triton.jit
def _store_kv_kernel(
    K, V, KC, VC, SLOTS, T,
    s_kb, s_kh, s_kt, s_kd, s_vb, s_vh, s_vt, s_vd, s_sb, s_st,
    H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
):
    token = tl.program_id(0)
    b = (token // T).to(tl.int64)
    t = token % T
    slot = tl.load(SLOTS + b * s_sb + t * s_st).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, HEAD_DIM)
    mask = (offs_h[:, None] < H) & (slot >= 0)
    dest = slot * (H * HEAD_DIM) + offs_h[:, None] * HEAD_DIM + offs_d[None, :]
    k = tl.load(K + b * s_kb + t * s_kt + offs_h[:, None] * s_kh + offs_d[None, :] * s_kd, mask=mask)
    tl.store(KC + dest, k.to(KC.dtype.element_ty), mask=mask)
    v = tl.load(V + b * s_vb + t * s_vt + offs_h[:, None] * s_vh + offs_d[None, :] * s_vd, mask=mask)
    tl.store(VC + dest, v.to(VC.dtype.element_ty), mask=mask)


def store_kv(k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, slot_mapping: Tensor) -> None:
    """Write k, v (batch, heads, T, head_dim) into caches (blocks, block_size, heads, head_dim) at slot_mapping."""
    check_device(_store_kv_kernel, k, v, k_cache, v_cache, slot_mapping)
    batch, heads, new, head_dim = k.shape
    if v.shape != k.shape or k_cache.shape != v_cache.shape or tuple(k_cache.shape[2:]) != (heads, head_dim):
        raise ValueError(f"k/v {tuple(k.shape)} do not fit caches {tuple(k_cache.shape)}")
    if head_dim & (head_dim - 1):
        raise ValueError(f"head_dim must be a power of two, got {head_dim}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("the paged caches must be contiguous")
    if tuple(slot_mapping.shape) != (batch, new):
        raise ValueError(f"slot_mapping must be {(batch, new)}, got {tuple(slot_mapping.shape)}")
    _store_kv_kernel[(batch * new,)](
        k, v, k_cache, v_cache, slot_mapping, new, *k.stride(), *v.stride(), *slot_mapping.stride(),
        H=heads, HEAD_DIM=head_dim, BLOCK_H=next_power_of_2(heads), num_warps=4 if heads * head_dim >= 1024 else 1,
    )
