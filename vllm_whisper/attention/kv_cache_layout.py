"""The K/V cache layout the attention backends read and write, owned here as a vLLM backend owns its KV shape.

Per decoder layer, self-attention K and V are (num_blocks, block_size, heads, head_dim): a sequence's tokens live
in fixed-size blocks named by its block table (the engine's BlockPool hands them out). Cross-attention K and V are
(num_slots, heads, encoder_frames, head_dim): every Whisper window has 1500 encoder frames, so one equal slot per
window (the engine's SlotPool). The engine sizes its pools with block_bytes / slot_bytes and allocates with
allocate_tensors; the _C cache-write ops (csrc/) assume these layouts, contiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_whisper.model_executor.whisper_config import WhisperConfig


@dataclass
class KVCacheTensors:
    """The cache memory itself, per decoder layer."""

    self_k: list[Tensor]  # (num_blocks, block_size, heads, head_dim)
    self_v: list[Tensor]
    cross_k: list[Tensor]  # (num_slots, heads, encoder_frames, head_dim)
    cross_v: list[Tensor]
    block_size: int


def self_cache_shape(config: WhisperConfig, num_blocks: int, block_size: int) -> tuple[int, int, int, int]:
    """One layer's self-attention K (or V) cache: (num_blocks, block_size, heads, head_dim)."""
    return (num_blocks, block_size, config.decoder_attention_heads, config.head_dim)


def cross_cache_shape(config: WhisperConfig, num_slots: int) -> tuple[int, int, int, int]:
    """One layer's cross-attention K (or V) cache: (num_slots, heads, encoder_frames, head_dim)."""
    return (num_slots, config.decoder_attention_heads, config.max_source_positions, config.head_dim)


def block_bytes(config: WhisperConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of one self-attention block across all layers (K and V)."""
    return config.decoder_layers * 2 * math.prod(self_cache_shape(config, 1, block_size)) * _itemsize(dtype)


def slot_bytes(config: WhisperConfig, dtype: torch.dtype) -> int:
    """Bytes of one window's cross-attention K/V across all layers (K and V)."""
    return config.decoder_layers * 2 * math.prod(cross_cache_shape(config, 1)) * _itemsize(dtype)


def allocate_tensors(config: WhisperConfig, num_blocks: int, num_slots: int, block_size: int,
                     dtype: torch.dtype, device: torch.device,
                     cross_dtype: torch.dtype | None = None) -> KVCacheTensors:
    """Zeroed caches for every decoder layer: num_blocks self-attention blocks (dtype) and num_slots cross slots
    (cross_dtype, default dtype)."""

    def per_layer(shape: tuple[int, ...], layer_dtype: torch.dtype) -> list[Tensor]:
        return [torch.zeros(shape, dtype=layer_dtype, device=device) for _ in range(config.decoder_layers)]

    self_shape = self_cache_shape(config, num_blocks, block_size)
    cross_shape = cross_cache_shape(config, num_slots)
    cross_dtype = cross_dtype or dtype
    return KVCacheTensors(per_layer(self_shape, dtype), per_layer(self_shape, dtype),
                          per_layer(cross_shape, cross_dtype), per_layer(cross_shape, cross_dtype), block_size)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
