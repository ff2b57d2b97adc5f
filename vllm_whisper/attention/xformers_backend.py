"""Optional xformers backend (CUDA, only when xformers is installed): xformers' memory-efficient attention for
the encoder and for cross attention over the slots; decoder self-attention stays on the torch reference path
(gather through the block table + masked SDPA)."""

from __future__ import annotations

import torch
from torch import Tensor

from vllm_whisper.attention.torch_paged import TorchPagedAttention


def _xops():
    import xformers.ops as xops

    return xops


def xformers_encoder_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(batch, heads, frames, head_dim) in and out; xformers works on (batch, frames, heads, head_dim)."""
    out = _xops().memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


class XFormersPagedAttention(TorchPagedAttention):
    def cross_attend(self, layer: int, q: Tensor) -> Tensor:
        slots = self.meta.cross_slots_list
        first = slots[0]
        cross_k, cross_v = self.cache.cross_k[layer], self.cache.cross_v[layer]
        if slots == list(range(first, first + len(slots))):
            k, v = cross_k[first:first + len(slots)], cross_v[first:first + len(slots)]
        else:
            index = torch.tensor(slots, device=q.device)
            k, v = cross_k.index_select(0, index), cross_v.index_select(0, index)
        return xformers_encoder_attention(q, k.to(q.dtype), v.to(q.dtype))
