"""Reference attention over the paged self-attention cache and the cross-attention slots, in plain torch.

Runs everywhere and is the oracle for the Triton kernels. Self-attention gathers each sequence's keys through
its block table; cross-attention reads each window's slot in place (no gather copy of 1500 frames), over the
frames the slot holds (fewer under a shortened audio context): on the CPU through the C++ kernel
(csrc/cpu/cross_attention_ops.cpp, which also reads a bfloat16 cache), elsewhere with SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vllm_whisper import _custom_ops as ops
from vllm_whisper.attention.kv_cache_layout import KVCacheTensors
from vllm_whisper.attention.metadata import PagedAttentionMetadata


class TorchPagedAttention:
    """DecoderAttention for one engine step."""

    def __init__(self, cache: KVCacheTensors, metadata: PagedAttentionMetadata):
        self.cache = cache
        self.meta = metadata
        new = metadata.slot_mapping.shape[1]
        keys = torch.arange(metadata.key_slots.shape[1], device=metadata.key_slots.device)
        query_pos = metadata.past_lens[:, None] + torch.arange(new, device=keys.device)[None, :]  # (B, T)
        valid = keys[None, None, :] < metadata.context_lens[:, None, None]
        causal = keys[None, None, :] <= query_pos[:, :, None]
        self.mask = (valid & causal)[:, None]  # (B, 1, T, L)

    def self_attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        heads, head_dim = q.shape[1], q.shape[3]
        flat_k = self.cache.self_k[layer].view(-1, heads, head_dim)
        flat_v = self.cache.self_v[layer].view(-1, heads, head_dim)
        # Store the new tokens' K/V (the vllm_whisper._C op when built; padding slots are -1 and skipped).
        ops.reshape_and_cache(k.transpose(1, 2), v.transpose(1, 2), self.cache.self_k[layer],
                              self.cache.self_v[layer], self.meta.slot_mapping)
        keys = flat_k[self.meta.key_slots].transpose(1, 2).to(q.dtype)  # (B, H, L, D)
        values = flat_v[self.meta.key_slots].transpose(1, 2).to(q.dtype)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=self.mask)

    def cross_attend(self, layer: int, q: Tensor) -> Tensor:
        cross_k, cross_v = self.cache.cross_k[layer], self.cache.cross_v[layer]
        slots = self.meta.cross_slots_list
        lens = self.meta.cross_lens_list or [cross_k.shape[2]] * len(slots)
        if q.device.type == "cpu" and q.dtype == torch.float32 and ops.has_cpu_cross_attention():
            # the C++ kernel reads every row's slot in place, float32 math over a float32 or bfloat16 cache
            return ops.cross_attention(q, cross_k, cross_v, slots, lens)
        first, frames = slots[0], lens[0]
        if slots == list(range(first, first + len(slots))) and lens.count(frames) == len(lens):
            # contiguous slots of one length: one batched call on a view
            k, v = cross_k[first:first + len(slots), :, :frames], cross_v[first:first + len(slots), :, :frames]
            return F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
        return ops.cross_attention_torch(q, cross_k, cross_v, slots, lens, q.shape[-1] ** -0.5)
