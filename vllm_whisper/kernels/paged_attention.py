"""Decoder self-attention over the paged cache, addressed through block tables.

The cache of one layer is (num_blocks, block_size, heads, head_dim); sequence b's key at position p lives in block
block_tables[b, p // block_size], row p % block_size. Query row t of sequence b sits at position past_lens[b] + t
and sees keys j < context_lens[b] with j <= past_lens[b] + t (rows past the sequence's new tokens are padding:
they see the whole context, exactly like the torch reference, and nobody reads them).

Two kernels: the prompt (prefill) kernel tiles BLOCK_M query rows and uses tensor-core dots; the one-token decode
kernel is a (batch x heads) grid of dot-product-by-reduction programs, since a single query row cannot fill an MMA.
Neither reads the host: loop bounds come from the lengths in device memory, so both can be captured in a CUDA graph.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from vllm_whisper.kernels._common import (
    alloc, check_device, check_dtype, check_head_dim, default_block, dot_precision, patch_interpreter_for_numpy_2_4,
    tensor_core_dots,
)
from vllm_whisper.kernels.online_softmax import softmax_step_row, softmax_step_tile

patch_interpreter_for_numpy_2_4()

LOG2E = 1.4426950408889634


def paged_attention_reference(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor,
                              past_lens: Tensor, context_lens: Tensor, scale: float | None = None) -> Tensor:
    """The oracle, one sequence at a time in float32: gather keys through the block table, mask, softmax."""
    batch, heads, new, head_dim = q.shape
    block_size = k_cache.shape[1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.empty_like(q)
    for b in range(batch):
        context, past = int(context_lens[b]), int(past_lens[b])
        positions = torch.arange(context, device=q.device)
        slots = block_tables[b].long()[positions // block_size] * block_size + positions % block_size
        keys = k_cache.flatten(0, 1)[slots].float().transpose(0, 1)  # (H, L, D)
        values = v_cache.flatten(0, 1)[slots].float().transpose(0, 1)
        scores = q[b].float() @ keys.transpose(1, 2) * scale  # (H, T, L)
        query_pos = past + torch.arange(new, device=q.device)
        scores = scores.masked_fill(positions[None, :] > query_pos[:, None], float("-inf"))
        out[b] = (torch.softmax(scores, dim=-1) @ values).to(q.dtype)
    return out


@triton.jit
def _paged_prefill_kernel(
    Q, KC, VC, O, BT, PAST, CTX, qk_scale, T,
    s_qb, s_qh, s_qt, s_qd, s_ob, s_oh, s_ot, s_od, s_bt,
    H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    bh = tl.program_id(0)
    start_m = tl.program_id(1)
    b = bh // H
    h = bh % H
    past = tl.load(PAST + b)
    context = tl.load(CTX + b)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    query_pos = past + offs_m
    q = tl.load(Q + b.to(tl.int64) * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :] * s_qd,
                mask=row_ok[:, None], other=0.0)
    end = tl.minimum(context, past + (start_m + 1) * BLOCK_M)  # keys beyond the tile's last query are masked
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, end, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < end
        block = tl.load(BT + b * s_bt + cols // BLOCK_SIZE, mask=col_ok, other=0).to(tl.int64)
        row = (block * BLOCK_SIZE + cols % BLOCK_SIZE) * (H * HEAD_DIM) + h * HEAD_DIM
        k = tl.load(KC + row[None, :] + offs_d[:, None], mask=col_ok[None, :], other=0.0)  # (HEAD_DIM, BLOCK_N)
        qk = tl.dot(q, k.to(q.dtype), input_precision=PRECISION) * qk_scale
        qk = tl.where(col_ok[None, :] & (cols[None, :] <= query_pos[:, None]), qk, float("-inf"))
        p, alpha, m_new, l_i = softmax_step_tile(qk, m_i, l_i)
        v = tl.load(VC + row[:, None] + offs_d[None, :], mask=col_ok[:, None], other=0.0).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(O + b.to(tl.int64) * s_ob + h * s_oh + offs_m[:, None] * s_ot + offs_d[None, :] * s_od,
             acc.to(O.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _paged_decode_kernel(
    Q, KC, VC, O, BT, CTX, qk_scale,
    s_qb, s_qh, s_qd, s_ob, s_oh, s_od, s_bt,
    H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh = tl.program_id(0)
    b = bh // H
    h = bh % H
    context = tl.load(CTX + b)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b.to(tl.int64) * s_qb + h * s_qh + offs_d * s_qd).to(tl.float32) * qk_scale
    m_i = float("-inf")
    l_i = 0.0
    acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, context, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < context
        block = tl.load(BT + b * s_bt + cols // BLOCK_SIZE, mask=col_ok, other=0).to(tl.int64)
        row = (block * BLOCK_SIZE + cols % BLOCK_SIZE) * (H * HEAD_DIM) + h * HEAD_DIM
        k = tl.load(KC + row[:, None] + offs_d[None, :], mask=col_ok[:, None], other=0.0).to(tl.float32)
        v = tl.load(VC + row[:, None] + offs_d[None, :], mask=col_ok[:, None], other=0.0).to(tl.float32)
        qk = tl.sum(q[None, :] * k, 1)
        qk = tl.where(col_ok, qk, float("-inf"))
        p, alpha, m_new, l_i = softmax_step_row(qk, m_i, l_i)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        m_i = m_new
    tl.store(O + b.to(tl.int64) * s_ob + h * s_oh + offs_d * s_od, (acc / l_i).to(O.dtype.element_ty))


def _check(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, *lengths: Tensor) -> None:
    check_device(_paged_prefill_kernel, q, k_cache, v_cache, block_tables, *lengths)
    check_dtype(q)
    check_head_dim(q.shape[-1])
    heads, head_dim = q.shape[1], q.shape[3]
    if k_cache.shape != v_cache.shape or tuple(k_cache.shape[2:]) != (heads, head_dim):
        raise ValueError(f"caches must be (blocks, block_size, {heads}, {head_dim}); got {tuple(k_cache.shape)}")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("the paged caches must be contiguous")
    if block_tables.shape[-1] > 1 and block_tables.stride(-1) != 1:
        raise ValueError("block_tables must be contiguous along the block axis")


def _empty_out(q: Tensor) -> Tensor:
    """(B, H, T, D) view of a (B, T, H, D) buffer: merge_heads then needs no copy."""
    b, h, t, d = q.shape
    return alloc((b, t, h, d), q.dtype, q.device).transpose(1, 2)


def paged_attention_prefill(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, past_lens: Tensor,
                            context_lens: Tensor, scale: float | None = None, block_m: int | None = None,
                            block_n: int | None = None) -> Tensor:
    """Causal attention of T new query rows per sequence, (batch, heads, T, head_dim), over the paged cache (the
    new tokens' K/V must already be stored). block_tables (batch, max_blocks) int32; lengths (batch,) int32."""
    _check(q, k_cache, v_cache, block_tables, past_lens, context_lens)
    batch, heads, new, head_dim = q.shape
    block_m = block_m or (64 if new > 16 and tensor_core_dots(q.device, q.dtype) else 16)
    block_n = block_n or default_block(q.device, 32, 128)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = _empty_out(q)
    grid = (batch * heads, triton.cdiv(new, block_m))
    _paged_prefill_kernel[grid](
        q, k_cache, v_cache, out, block_tables, past_lens, context_lens, scale * LOG2E, new,
        *q.stride(), *out.stride(), block_tables.stride(0),
        H=heads, HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[1], BLOCK_M=block_m, BLOCK_N=block_n,
        PRECISION=dot_precision(q.dtype), num_warps=4, num_stages=2,
    )
    return out


def paged_attention_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor,
                           context_lens: Tensor, scale: float | None = None, block_n: int | None = None) -> Tensor:
    """One query row per sequence, (batch, heads, 1, head_dim), over keys [0, context_lens[b]) of the cache."""
    _check(q, k_cache, v_cache, block_tables, context_lens)
    batch, heads, new, head_dim = q.shape
    if new != 1:
        raise ValueError(f"decode takes one query token per sequence, got {new}")
    block_n = block_n or default_block(q.device, 64, 256)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = _empty_out(q)
    _paged_decode_kernel[(batch * heads,)](
        q, k_cache, v_cache, out, block_tables, context_lens, scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(3), out.stride(0), out.stride(1), out.stride(3), block_tables.stride(0),
        H=heads, HEAD_DIM=head_dim, BLOCK_SIZE=k_cache.shape[1], BLOCK_N=block_n, num_warps=4,
    )
    return out


def paged_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor, past_lens: Tensor,
                    context_lens: Tensor, scale: float | None = None) -> Tensor:
    """Prefill for several new tokens per sequence, decode for one."""
    if q.shape[2] == 1:
        return paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale)
    return paged_attention_prefill(q, k_cache, v_cache, block_tables, past_lens, context_lens, scale)
