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
    """

    slot_mapping: Tensor
    key_slots: Tensor
    context_lens: Tensor
    past_lens: Tensor
    cross_slots: Tensor
    cross_slots_list: list[int]

    @classmethod
    def build(cls, block_tables: list[list[int]], past_lens: list[int], new_lens: list[int],
              cross_slots: list[int], block_size: int, device: torch.device) -> "PagedAttentionMetadata":
        batch, t_max = len(block_tables), max(new_lens)
        context = [p + n for p, n in zip(past_lens, new_lens)]
        l_max = max(context)
        slot_mapping = torch.full((batch, t_max), -1, dtype=torch.long)
        key_slots = torch.zeros((batch, l_max), dtype=torch.long)
        for b, table in enumerate(block_tables):
            positions = torch.arange(context[b])
            blocks = torch.tensor(table, dtype=torch.long)[positions // block_size]
            slots = blocks * block_size + positions % block_size
            key_slots[b, : context[b]] = slots
            slot_mapping[b, : new_lens[b]] = slots[past_lens[b]:]
        return cls(
            slot_mapping.to(device), key_slots.to(device), torch.tensor(context, device=device),
            torch.tensor(past_lens, device=device), torch.tensor(cross_slots, device=device), list(cross_slots),
        )
