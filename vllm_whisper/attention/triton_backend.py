"""Triton attention over the engine's caches: the same interface and cache layout as TorchPagedAttention. Per step
(built once, shared by all layers): int32 block tables derived from the metadata's key slots, the lengths, the new
tokens' slots, each row's cross-attention slot and the frames that slot holds. Per layer: one fused K/V store, one
paged self-attention kernel (prefill or decode) and the split-frames cross-attention kernel (plus its combine).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vllm_whisper.attention.kv_cache_layout import KVCacheTensors
from vllm_whisper.attention.metadata import PagedAttentionMetadata
from vllm_whisper.kernels.cross_attention import cross_attention
from vllm_whisper.kernels.kv_store import store_kv
from vllm_whisper.kernels.paged_attention import paged_attention


class TritonPagedAttention:
    """DecoderAttention for one engine step, on Triton kernels."""

    def __init__(self, cache: KVCacheTensors, metadata: PagedAttentionMetadata):
        block_size = cache.block_size
        self.cache = cache
        # key_slots[b, p] = table[b, p // block_size] * block_size + p % block_size, so every block_size-th column
        # names the block; columns past a sequence's context are 0 and never read (the kernels stop at its length).
        self.block_tables = (metadata.key_slots[:, ::block_size] // block_size).to(torch.int32).contiguous()
        self.past_lens = metadata.past_lens.to(torch.int32)
        self.context_lens = metadata.context_lens.to(torch.int32)
        self.slot_mapping = metadata.slot_mapping
        self.cross_slots = metadata.cross_slots.to(torch.int32)
        self.cross_lens = self._lens(cache, metadata.cross_lens, len(metadata.cross_slots_list))

    @classmethod
    def from_tensors(cls, cache: KVCacheTensors, block_tables: Tensor, past_lens: Tensor, context_lens: Tensor,
                     slot_mapping: Tensor, cross_slots: Tensor, cross_lens: Tensor | None = None
                     ) -> "TritonPagedAttention":
        """Over caller-owned int32 tables and lengths, used as they are (no copies): the CUDA-graph decode path
        keeps them in fixed buffers whose addresses the captured kernels read."""
        attention = cls.__new__(cls)
        attention.cache = cache
        attention.block_tables, attention.past_lens, attention.context_lens = block_tables, past_lens, context_lens
        attention.slot_mapping, attention.cross_slots = slot_mapping, cross_slots
        attention.cross_lens = cls._lens(cache, cross_lens, cross_slots.shape[0])
        return attention

    @staticmethod
    def _lens(cache: KVCacheTensors, lens: Tensor | None, batch: int) -> Tensor:
        """int32 frames per row's slot: the given lengths, or every slot full."""
        if lens is None:
            return torch.full((batch,), cache.cross_k[0].shape[2], dtype=torch.int32, device=cache.cross_k[0].device)
        return lens.to(torch.int32)

    def self_attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        k_cache, v_cache = self.cache.self_k[layer], self.cache.self_v[layer]
        store_kv(k, v, k_cache, v_cache, self.slot_mapping)
        return paged_attention(q, k_cache, v_cache, self.block_tables, self.past_lens, self.context_lens)

    def cross_attend(self, layer: int, q: Tensor) -> Tensor:
        return cross_attention(q, self.cache.cross_k[layer], self.cache.cross_v[layer], self.cross_slots,
                               lens=self.cross_lens)
