"""Bookkeeping of the decoding memory: which self-attention blocks and cross-attention slots are in use.

Every Whisper window has 1500 encoder frames, so cross K/V lives in equal slots (no fragmentation). Decoder
self-attention K/V grows token by token, so it lives in 16-token blocks addressed through per-sequence block
tables; blocks carry reference counts so beams can share a prefix copy-on-write. The tensors themselves and their
per-block / per-slot sizes are the attention layer's (attention/kv_cache_layout.py); plan_pools asks it for them.
"""

from __future__ import annotations

from collections import deque

import torch

from vllm_whisper.attention.kv_cache_layout import block_bytes, slot_bytes
from vllm_whisper.model_executor.whisper_config import WhisperConfig


class CacheExhaustedError(RuntimeError):
    """A pool has no free entry; the scheduler must wait or preempt."""


class BlockPool:
    """A fixed set of self-attention blocks with reference counts."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._refs = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    def can_allocate(self, count: int) -> bool:
        return count <= len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise CacheExhaustedError("no free KV blocks")
        block = self._free.popleft()
        self._refs[block] = 1
        return block

    def share(self, block: int) -> int:
        """Another sequence now reads this block (beam fork)."""
        self._refs[block] += 1
        return block

    def ref_count(self, block: int) -> int:
        return self._refs[block]

    def free(self, block: int) -> None:
        if self._refs[block] <= 0:
            raise RuntimeError(f"KV block {block} freed twice")
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free.append(block)


class SlotPool:
    """A fixed set of cross-attention slots, one per active window."""

    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self._free: deque[int] = deque(range(num_slots))
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise CacheExhaustedError("no free cross-attention slots")
        slot = self._free.popleft()
        self._used.add(slot)
        return slot

    def free(self, slot: int) -> None:
        if slot not in self._used:
            raise RuntimeError(f"cross-attention slot {slot} freed twice")
        self._used.remove(slot)
        self._free.append(slot)


def plan_pools(config: WhisperConfig, budget_bytes: int, block_size: int, max_num_seqs: int,
               dtype: torch.dtype, cross_dtype: torch.dtype | None = None) -> tuple[int, int]:
    """Split a byte budget into (blocks, slots): each slot is paired with enough blocks for a full decode, and
    nothing is reserved beyond what max_num_seqs sequences can use. cross_dtype: the slots' dtype (default dtype)."""
    cross_dtype = cross_dtype or dtype
    blocks_per_seq = -(-config.max_target_positions // block_size)
    per_sequence = slot_bytes(config, cross_dtype) + blocks_per_seq * block_bytes(config, block_size, dtype)
    slots = min(max_num_seqs, budget_bytes // per_sequence)
    if slots < 1:
        raise ValueError(
            f"The KV cache budget of {budget_bytes / 2**30:.2f} GiB cannot hold one sequence "
            f"({per_sequence / 2**20:.1f} MiB for this model); raise --kv-cache-space or "
            f"--gpu-memory-utilization."
        )
    blocks = (budget_bytes - slots * slot_bytes(config, cross_dtype)) // block_bytes(config, block_size, dtype)
    return int(min(blocks, max_num_seqs * blocks_per_seq)), int(slots)
