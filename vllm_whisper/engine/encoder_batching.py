"""How many windows one encoder forward takes.

On a GPU one forward takes the step's whole batch. On the CPU a batch of windows is encoded one window (1500
frames) per forward: every intermediate of a 1500-row forward (at most 9 MB, the MLP's hidden states) stays in the
last-level cache and is recycled by the allocator, while a 24-window forward allocates 220 MB tensors that fault
in fresh pages and stream through memory. Measured on a 2-core EPYC, tiny.en int8, 24 windows: one forward 10.2 s,
24 forwards of one window 4.0 s (README "Performance"). Shortened windows (engine/audio_context.py) are packed up
to the same number of rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

CPU_ENCODER_ROWS = 1500  # encoder frames per CPU forward: one full window

Item = TypeVar("Item")


def encoder_windows_per_call(device: torch.device, frames: int) -> int | None:
    """Windows of `frames` encoder frames per forward on this device; None: all of them in one forward."""
    if device.type != "cpu":
        return None
    return max(1, CPU_ENCODER_ROWS // max(1, frames))


def micro_batches(items: Sequence[Item], size: int | None) -> list[Sequence[Item]]:
    """`items` in consecutive runs of at most `size` (one run when size is None)."""
    if size is None or size >= len(items):
        return [items]
    return [items[start:start + size] for start in range(0, len(items), size)]
