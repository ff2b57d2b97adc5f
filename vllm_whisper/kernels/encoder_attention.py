"""Encoder self-attention: non-causal flash attention (forward only) over the 1500 frames of each window.

Inputs are (batch, heads, frames, head_dim) with any strides, so the encoder's split_heads views go in without a
copy; the output is laid out (batch, frames, heads, head_dim) and returned as the (batch, heads, frames, head_dim)
view, so merge_heads' transpose + reshape is free. Softmax runs in float32 with the online (running max) form;
the last, partial block of keys is the only one masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from vllm_whisper.kernels._common import (
    alloc, check_device, check_dtype, check_head_dim, dot_precision, patch_interpreter_for_numpy_2_4,
    tensor_core_dots,
)
from vllm_whisper.kernels.online_softmax import softmax_step_tile

patch_interpreter_for_numpy_2_4()

LOG2E = 1.4426950408889634


def encoder_attention_reference(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """The oracle: softmax(q k^T * scale) v in float32, cast back to q's dtype."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(scores, dim=-1), v.float()).to(q.dtype)


@triton.jit
def _encoder_attention_kernel(
    Q, K, V, O, qk_scale, N, N_FULL,  # N_FULL: frames in whole BLOCK_N blocks
    s_qb, s_qh, s_qn, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd, s_ob, s_oh, s_on, s_od,
    H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_d[None, :] * s_qd,
                mask=row_ok[:, None], other=0.0)
    k_base = K + b * s_kb + h * s_kh + offs_d[:, None] * s_kd  # keys are read transposed: (HEAD_DIM, BLOCK_N)
    v_base = V + b * s_vb + h * s_vh + offs_d[None, :] * s_vd
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, N_FULL, BLOCK_N):  # full blocks: no masks
        cols = start_n + offs_n
        k = tl.load(k_base + cols[None, :] * s_kn)
        qk = tl.dot(q, k, input_precision=PRECISION) * qk_scale
        p, alpha, m_new, l_i = softmax_step_tile(qk, m_i, l_i)
        v = tl.load(v_base + cols[:, None] * s_vn)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    if N_FULL < N:  # the partial last block
        cols = N_FULL + offs_n
        col_ok = cols < N
        k = tl.load(k_base + cols[None, :] * s_kn, mask=col_ok[None, :], other=0.0)
        qk = tl.dot(q, k, input_precision=PRECISION) * qk_scale
        qk = tl.where(col_ok[None, :], qk, float("-inf"))
        p, alpha, m_new, l_i = softmax_step_tile(qk, m_i, l_i)
        v = tl.load(v_base + cols[:, None] * s_vn, mask=col_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    acc = acc / l_i[:, None]
    tl.store(O + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_d[None, :] * s_od,
             acc.to(O.dtype.element_ty), mask=row_ok[:, None])


@dataclass(frozen=True)
class EncoderAttentionConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def default_config(device: torch.device, dtype: torch.dtype) -> EncoderAttentionConfig:
    """Tiles by architecture, chosen from ptxas resource reports (python -m vllm_whisper.kernels.compile_check):
    tensor-core dots (8.0+, half types) take 128 x 64 tiles over 8 warps (no spills); FMA dots (Turing, IEEE
    float32) hold whole operand tiles in registers, so 16 x 16 tiles (few spills). On Turing the engine runs the
    encoder on torch SDPA instead (attention.selector). Not yet tuned on a GPU: see benchmarks/benchmark_kernels.py."""
    if device.type != "cuda":  # the interpreter: its cost is per operation, so the fewest, largest tiles
        return EncoderAttentionConfig(512, 512, 4, 1)
    if tensor_core_dots(device, dtype):
        return EncoderAttentionConfig(128, 64, 8, 3)
    return EncoderAttentionConfig(16, 16, 4, 2)  # FMA dots hold whole operand tiles in registers


def encoder_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None,
                      config: EncoderAttentionConfig | None = None) -> Tensor:
    """softmax(q k^T * scale) v for (batch, heads, frames, head_dim) q, k, v (no mask; frames need not divide
    the block size)."""
    check_device(_encoder_attention_kernel, q, k, v)
    check_dtype(q)
    batch, heads, frames, head_dim = q.shape
    check_head_dim(head_dim)
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    k, v = k.to(q.dtype), v.to(q.dtype)
    config = config or default_config(q.device, q.dtype)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = alloc((batch, frames, heads, head_dim), q.dtype, q.device).transpose(1, 2)
    grid = (triton.cdiv(frames, config.block_m), batch * heads)
    _encoder_attention_kernel[grid](
        q, k, v, out, scale * LOG2E, frames, frames // config.block_n * config.block_n,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H=heads, HEAD_DIM=head_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        PRECISION=dot_precision(q.dtype), num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out
