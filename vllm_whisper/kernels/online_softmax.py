"""The online-softmax step every attention kernel here runs per block of keys (Triton device functions, inlined).

Scores arrive scaled by log2(e) and masked with -inf; each step returns the block's unnormalised probabilities,
the factor that rescales what was accumulated so far (exp2(old max - new max)), the new running max and the new
running sum. The caller adds probabilities x values to its accumulator, rescaled by that factor.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softmax_step_tile(qk, m_i, l_i):
    """Scores (BLOCK_M, BLOCK_N) for BLOCK_M query rows; m_i, l_i (BLOCK_M,)."""
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def softmax_step_row(qk, m_i, l_i):
    """Scores (BLOCK_N,) for one query row (decode); m_i, l_i scalars."""
    m_new = tl.maximum(tl.max(qk, 0), m_i)
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(qk - m_new)
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 0)
