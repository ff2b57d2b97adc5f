"""Cross attention over each window's cross-K/V slot, split over the frames (flash-decoding).

The slot pool of one layer is (num_slots, heads, frames, head_dim): one window's keys for one head are a single
contiguous run of frames x head_dim values, which is what a decode step must stream in full for every token (the
engine's bandwidth floor). A batch of B sequences has only B x heads (sequence, head) pairs, too few programs to
keep every SM streaming at small B, so the frames are cut into splits: each program reduces one split to a
partial output plus its log-sum-exp, and a second small kernel combines the splits. When B x heads alone fills the
device, one split is used and the first kernel writes the output directly. Each row reads only the frames its slot
holds (a per-row length: a shortened audio context stores fewer than 1500); splits past them do nothing.

Decode (one query per sequence) reduces with elementwise products; several query tokens per sequence (the prompt)
use tensor-core dots over BLOCK_M query rows, reading the window's K/V once for all of them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from vllm_whisper.kernels._common import (
    alloc, check_device, check_dtype, check_head_dim, default_block, dot_precision, next_power_of_2,
    patch_interpreter_for_numpy_2_4, sm_count, tensor_core_dots,
)
from vllm_whisper.kernels.online_softmax import softmax_step_row, softmax_step_tile

patch_interpreter_for_numpy_2_4()

LOG2E = 1.4426950408889634
PROGRAMS_PER_SM = 8  # programs per SM that keep its loads streaming (tune with benchmarks/benchmark_kernels.py)


def cross_attention_reference(q: Tensor, cross_k: Tensor, cross_v: Tensor, slots: Tensor,
                              scale: float | None = None, lens: Tensor | None = None) -> Tensor:
    """The oracle in float32: row b of q (batch, heads, T, head_dim) attends over slot slots[b], its first lens[b]
    frames (all when lens is None)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    index = slots.long()
    keys, values = cross_k[index].float(), cross_v[index].float()  # (B, H, N, D)
    scores = q.float() @ keys.transpose(-1, -2) * scale
    if lens is not None:
        frames = torch.arange(cross_k.shape[2], device=q.device)
        scores = scores.masked_fill(frames[None, None, None, :] >= lens.long()[:, None, None, None], float("-inf"))
    return (torch.softmax(scores, dim=-1) @ values).to(q.dtype)


@triton.jit
def _cross_decode_kernel(
    Q, K, V, O, O_PART, LSE_PART, SLOTS, LENS, qk_scale, FRAMES_PER_SPLIT,
    s_qb, s_qh, s_qd, s_ks, s_kh, s_kn, s_kd, s_vs, s_vh, s_vn, s_vd, s_ob, s_oh, s_od,
    H: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // H
    h = bh % H
    slot = tl.load(SLOTS + b).to(tl.int64)
    N = tl.load(LENS + b)  # frames this row's slot holds: splits past them run no iteration
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b.to(tl.int64) * s_qb + h * s_qh + offs_d * s_qd).to(tl.float32) * qk_scale
    k_base = K + slot * s_ks + h * s_kh + offs_d[None, :] * s_kd
    v_base = V + slot * s_vs + h * s_vh + offs_d[None, :] * s_vd
    start = split * FRAMES_PER_SPLIT
    stop = tl.minimum(start + FRAMES_PER_SPLIT, N)
    m_i = float("-inf")
    l_i = 0.0
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for start_n in range(start, stop, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < stop
        k = tl.load(k_base + cols[:, None] * s_kn, mask=col_ok[:, None], other=0.0).to(tl.float32)
        v = tl.load(v_base + cols[:, None] * s_vn, mask=col_ok[:, None], other=0.0).to(tl.float32)  # both in flight
        qk = tl.sum(q[None, :] * k, 1)
        qk = tl.where(col_ok, qk, float("-inf"))
        p, alpha, m_new, l_i = softmax_step_row(qk, m_i, l_i)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        m_i = m_new
    if NUM_SPLITS == 1:
        tl.store(O + b.to(tl.int64) * s_ob + h * s_oh + offs_d * s_od, (acc / l_i).to(O.dtype.element_ty))
    else:
        part = bh.to(tl.int64) * NUM_SPLITS + split  # partials are (B, H, T=1, splits, ...)
        filled = l_i > 0  # an empty split (past a shortened slot's frames) weighs nothing in the combine
        tl.store(O_PART + part * HEAD_DIM + offs_d, acc / tl.where(filled, l_i, 1.0))
        tl.store(LSE_PART + part, tl.where(filled, m_i + tl.math.log2(tl.where(filled, l_i, 1.0)), float("-inf")))


@triton.jit
def _cross_prefill_kernel(
    Q, K, V, O, O_PART, LSE_PART, SLOTS, LENS, qk_scale, T, FRAMES_PER_SPLIT,
    s_qb, s_qh, s_qt, s_qd, s_ks, s_kh, s_kn, s_kd, s_vs, s_vh, s_vn, s_vd, s_ob, s_oh, s_ot, s_od,
    H: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    start_m = tl.program_id(2)
    b = bh // H
    h = bh % H
    slot = tl.load(SLOTS + b).to(tl.int64)
    N = tl.load(LENS + b)  # frames this row's slot holds: splits past them run no iteration
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    q = tl.load(Q + b.to(tl.int64) * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :] * s_qd,
                mask=row_ok[:, None], other=0.0)
    k_base = K + slot * s_ks + h * s_kh + offs_d[:, None] * s_kd  # read transposed: (HEAD_DIM, BLOCK_N)
    v_base = V + slot * s_vs + h * s_vh + offs_d[None, :] * s_vd
    start = split * FRAMES_PER_SPLIT
    stop = tl.minimum(start + FRAMES_PER_SPLIT, N)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(start, stop, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < stop
        k = tl.load(k_base + cols[None, :] * s_kn, mask=col_ok[None, :], other=0.0).to(q.dtype)
        qk = tl.dot(q, k, input_precision=PRECISION) * qk_scale
        qk = tl.where(col_ok[None, :], qk, float("-inf"))
        p, alpha, m_new, l_i = softmax_step_tile(qk, m_i, l_i)
        v = tl.load(v_base + cols[:, None] * s_vn, mask=col_ok[:, None], other=0.0).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=PRECISION)
        m_i = m_new
    if NUM_SPLITS == 1:
        tl.store(O + b.to(tl.int64) * s_ob + h * s_oh + offs_m[:, None] * s_ot + offs_d[None, :] * s_od,
                 (acc / l_i[:, None]).to(O.dtype.element_ty), mask=row_ok[:, None])
    else:
        part = (bh.to(tl.int64) * T + offs_m) * NUM_SPLITS + split  # partials are (B, H, T, splits, ...)
        filled = l_i > 0  # an empty split (past a shortened slot's frames) weighs nothing in the combine
        l_safe = tl.where(filled, l_i, 1.0)
        tl.store(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], acc / l_safe[:, None], mask=row_ok[:, None])
        tl.store(LSE_PART + part, tl.where(filled, m_i + tl.math.log2(l_safe), float("-inf")), mask=row_ok)


@triton.jit
def _combine_splits_kernel(
    O_PART, LSE_PART, O, T, s_ob, s_oh, s_ot, s_od,
    H: tl.constexpr, HEAD_DIM: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr,
):
    row = tl.program_id(0)  # over (B, H, T)
    t = row % T
    bh = row // T
    b = bh // H
    h = bh % H
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    split_ok = offs_s < NUM_SPLITS
    part = row.to(tl.int64) * NUM_SPLITS + offs_s
    lse = tl.load(LSE_PART + part, mask=split_ok, other=float("-inf"))
    weights = tl.math.exp2(lse - tl.max(lse, 0))
    partial = tl.load(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], mask=split_ok[:, None], other=0.0)
    out = tl.sum(weights[:, None] * partial, 0) / tl.sum(weights, 0)
    tl.store(O + b.to(tl.int64) * s_ob + h * s_oh + t * s_ot + offs_d * s_od, out.to(O.dtype.element_ty))


def plan_splits(rows: int, frames: int, block_n: int, device: torch.device) -> tuple[int, int]:
    """(num_splits, frames_per_split): enough programs for PROGRAMS_PER_SM on every SM, each split a whole number of
    BLOCK_N tiles. rows = batch x heads x query tiles."""
    target = PROGRAMS_PER_SM * sm_count(device)
    splits = max(1, min(triton.cdiv(target, rows), triton.cdiv(frames, block_n)))
    per_split = triton.cdiv(triton.cdiv(frames, splits), block_n) * block_n
    return triton.cdiv(frames, per_split), per_split


def cross_attention(q: Tensor, cross_k: Tensor, cross_v: Tensor, slots: Tensor, scale: float | None = None,
                    num_splits: int | None = None, block_n: int | None = None, block_m: int | None = None,
                    lens: Tensor | None = None) -> Tensor:
    """Attention of q (batch, heads, T, head_dim) over cross_k / cross_v (num_slots, heads, frames, head_dim) at
    slot slots[b] (int32 (batch,)) for row b, over its first lens[b] frames (int32 (batch,), 1 to frames; None: all).
    num_splits=None plans the split from the device's SM count (over all frames: splits past a row's length are
    empty programs, so the plan never needs the lengths on the host)."""
    if lens is None:
        lens = torch.full((q.shape[0],), cross_k.shape[2], dtype=torch.int32, device=q.device)
    check_device(_cross_decode_kernel, q, cross_k, cross_v, slots, lens)
    check_dtype(q)
    batch, heads, new, head_dim = q.shape
    check_head_dim(head_dim)
    if cross_k.shape != cross_v.shape or cross_k.shape[1] != heads or cross_k.shape[3] != head_dim:
        raise ValueError(f"cross K/V {tuple(cross_k.shape)} do not fit queries {tuple(q.shape)}")
    frames = cross_k.shape[2]
    decode = new == 1
    block_n = block_n or default_block(q.device, 64 if decode or tensor_core_dots(q.device, q.dtype) else 32, 2048)
    block_m = 1 if decode else (block_m or 16)
    m_tiles = triton.cdiv(new, block_m)
    if num_splits is None:
        num_splits, per_split = plan_splits(batch * heads * m_tiles, frames, block_n, q.device)
    else:
        per_split = triton.cdiv(triton.cdiv(frames, num_splits), block_n) * block_n
        num_splits = triton.cdiv(frames, per_split)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = alloc((batch, new, heads, head_dim), q.dtype, q.device).transpose(1, 2)
    if num_splits > 1:
        o_part = alloc((batch, heads, new, num_splits, head_dim), torch.float32, q.device)
        lse_part = alloc((batch, heads, new, num_splits), torch.float32, q.device)
    else:
        o_part = lse_part = out  # unused
    common = dict(H=heads, HEAD_DIM=head_dim, NUM_SPLITS=num_splits, BLOCK_N=block_n)
    if decode:
        _cross_decode_kernel[(batch * heads, num_splits)](
            q, cross_k, cross_v, out, o_part, lse_part, slots, lens, scale * LOG2E, per_split,
            q.stride(0), q.stride(1), q.stride(3), *cross_k.stride(), *cross_v.stride(),
            out.stride(0), out.stride(1), out.stride(3), **common, num_warps=4,
        )
    else:
        _cross_prefill_kernel[(batch * heads, num_splits, m_tiles)](
            q, cross_k, cross_v, out, o_part, lse_part, slots, lens, scale * LOG2E, new, per_split,
            *q.stride(), *cross_k.stride(), *cross_v.stride(), *out.stride(), **common, BLOCK_M=block_m,
            PRECISION=dot_precision(q.dtype), num_warps=4, num_stages=2,
        )
    if num_splits > 1:
        _combine_splits_kernel[(batch * heads * new,)](
            o_part, lse_part, out, new, *out.stride(), H=heads, HEAD_DIM=head_dim, NUM_SPLITS=num_splits,
            BLOCK_S=max(2, next_power_of_2(num_splits)), num_warps=1,
        )
    return out
