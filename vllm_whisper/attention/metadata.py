"""Per-step description of where each sequence's tokens live in the caches (shared by all layers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PagedAttentionMetadata:
    """A padded batch of B sequences feeding T_max new tokens each (decode: T_max = 1).

    slot_mapping: (B, T) flat cache slot for each new token's K/V, -1 for padding.
    key_slots: (B, L) flat cache slot of every key each sequence attends to (L = longest context), 0 past the end.
    context_lens: (B,) tokens in each sequence's cache after this step.
    past_lens: (B,) tokens that were already cached before this step.
    cross_slots: (B,) each sequence's cross-attention slot.
    cross_lens: (B,) encoder frames each sequence's slot holds (a shortened audio context stores fewer than the
        slot's 1500), or None when every slot is full.
    """

    slot_mapping: Tensor
    key_slots: Tensor
    context_lens: Tensor
    past_lens: Tensor
    cross_slots: Tensor
    cross_slots_list: list[int]
    cross_lens: Tensor | None = None
    cross_lens_list: list[int] | None = None

    @classmethod
    def build(cls, block_tables: list[list[int]], past_lens: list[int], new_lens: list[int],
              cross_slots: list[int], block_size: int, device: torch.device,
              cross_lens: list[int] | None = None) -> "PagedAttentionMetadata":
        """Vectorised: one padded block-table tensor, then slots = block * block_size + offset for every key."""
        t_max = max(new_lens)
        max_blocks = max(len(t) for t in block_tables)
        tables = torch.tensor([t + [0] * (max_blocks - len(t)) for t in block_tables], dtype=torch.long)
        past = torch.tensor(past_lens, dtype=torch.long)
        context = past + torch.tensor(new_lens, dtype=torch.long)
        positions = torch.arange(int(context.max()))
        key_slots = tables[:, positions // block_size] * block_size + positions % block_size  # (B, L)
        key_slots = key_slots.masked_fill(positions[None, :] >= context[:, None], 0)
        new_positions = past[:, None] + torch.arange(t_max)[None, :]  # (B, T)
        is_new = new_positions < context[:, None]
        slot_mapping = key_slots.gather(1, new_positions.clamp(max=key_slots.shape[1] - 1))
        slot_mapping = slot_mapping.masked_fill(~is_new, -1)
        return cls(
            slot_mapping.to(device), key_slots.to(device), context.to(device), past.to(device),
            torch.tensor(cross_slots, device=device), list(cross_slots),
            None if cross_lens is None else torch.tensor(cross_lens, device=device),
            None if cross_lens is None else list(cross_lens),
        )
