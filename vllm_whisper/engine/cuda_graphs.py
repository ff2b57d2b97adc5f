"""CUDA graphs for one-token decode steps at bucketed batch sizes.

A decode step is a few dozen small kernels per decoder layer; for Whisper's narrow decoders the CPU launching them,
not the GPU, bounds the step. Replaying a captured graph launches them all at once. A step of B sequences runs the
graph of the smallest bucket >= B over fixed-shape input buffers: token ids, positions, block tables of fixed width
(max_target_positions / block_size columns), lengths, the new tokens' cache slots and each row's cross-attention
slot. Rows past B are padding: they write no K/V (slot -1), attend one key of block 0 and read slot 0's cross K/V;
their logits are dropped. Prefill steps (a window's first step, which feeds the whole prompt) stay eager.

Graphs need the Triton backend: its kernels read every length and slot from device tensors, so nothing a launch
depends on changes between replays (the torch reference picks shapes and branches on host values each step).
Without CUDA the same buffers and forward run eagerly (`capture=False`): that is how the padding and the fixed-width
tables are tested on the CPU under the Triton interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_whisper.attention.triton_backend import TritonPagedAttention
from vllm_whisper.engine.kv_cache import KVCacheTensors
from vllm_whisper.model_executor.whisper import WhisperModel


def capture_batch_sizes(max_num_seqs: int) -> list[int]:
    """Buckets 1, 2, 4, then every multiple of 8, up to and including max_num_seqs (as vLLM pads decode batches)."""
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be at least 1, got {max_num_seqs}")
    candidates = [1, 2, 4, *range(8, max_num_seqs, 8)]
    return sorted({size for size in candidates if size < max_num_seqs} | {max_num_seqs})


def bucket_for(batch: int, sizes: list[int]) -> int | None:
    """The smallest captured size that holds the batch, or None when the batch is larger than every bucket."""
    return next((size for size in sizes if size >= batch), None)


@dataclass
class DecodeRow:
    """What one sequence feeds a decode step, as host values."""

    token: int
    position: int
    block_table: list[int]
    cross_slot: int


@dataclass
class DecodeBuffers:
    """Device inputs of every bucket's graph; a bucket of N reads the first N rows, so one set serves all sizes."""

    tokens: Tensor  # (max_batch, 1) int64
    positions: Tensor  # (max_batch, 1) int64
    block_tables: Tensor  # (max_batch, max_blocks) int32
    past_lens: Tensor  # (max_batch,) int32: tokens cached before the step (= position)
    context_lens: Tensor  # (max_batch,) int32: tokens cached after it (= position + 1)
    slot_mapping: Tensor  # (max_batch, 1) int64: the new token's flat cache slot, -1 for padding rows
    cross_slots: Tensor  # (max_batch,) int32

    @classmethod
    def allocate(cls, max_batch: int, max_blocks: int, device: torch.device) -> "DecodeBuffers":
        def zeros(*shape: int, dtype: torch.dtype) -> Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        return cls(zeros(max_batch, 1, dtype=torch.long), zeros(max_batch, 1, dtype=torch.long),
                   zeros(max_batch, max_blocks, dtype=torch.int32), zeros(max_batch, dtype=torch.int32),
                   torch.ones(max_batch, dtype=torch.int32, device=device),
                   torch.full((max_batch, 1), -1, dtype=torch.long, device=device),
                   zeros(max_batch, dtype=torch.int32))


class DecodeGraphs:
    """Captured decode graphs, one per bucket, and the buffers they read."""

    def __init__(self, model: WhisperModel, cache: KVCacheTensors, batch_sizes: list[int], capture: bool):
        if capture and model.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        if not batch_sizes:
            raise ValueError("at least one decode batch size is needed")
        self.model = model
        self.cache = cache
        self.batch_sizes = sorted(set(batch_sizes))
        self.max_blocks = -(-model.config.max_target_positions // cache.block_size)
        self.buffers = DecodeBuffers.allocate(self.max_batch, self.max_blocks, model.device)
        self.captured = capture
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        self.replays = 0
        if capture:
            self._capture_all()

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    def bucket(self, batch: int) -> int | None:
        return bucket_for(batch, self.batch_sizes)

    @torch.inference_mode()
    def _forward(self, size: int) -> Tensor:
        """The decode step over the first `size` buffer rows: (size, vocab) float32 logits."""
        b = self.buffers
        attention = TritonPagedAttention.from_tensors(self.cache, b.block_tables[:size], b.past_lens[:size],
                                                      b.context_lens[:size], b.slot_mapping[:size],
                                                      b.cross_slots[:size])
        hidden = self.model.decoder(b.tokens[:size], b.positions[:size], attention)
        return self.model.compute_logits(hidden[:, 0])

    def _capture_all(self) -> None:
        """Largest bucket first, all in one memory pool (smaller graphs reuse the larger ones' scratch memory). Each
        bucket runs once eagerly first so Triton compiles its kernels outside the capture. Every row is padding
        while capturing, so nothing is written to the cache."""
        pool = torch.cuda.graph_pool_handle()
        for size in reversed(self.batch_sizes):
            self._forward(size)
            torch.cuda.synchronize(self.model.device)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, pool=pool):
                logits = self._forward(size)
            self._graphs[size] = (graph, logits)
        torch.cuda.synchronize(self.model.device)

    def run(self, rows: list[DecodeRow]) -> Tensor:
        """Logits (len(rows), vocab) of one decode step. The view is valid until the next run: the caller consumes
        it (rules, sampling) within the step."""
        size = self.bucket(len(rows))
        if size is None:
            raise ValueError(f"a decode batch of {len(rows)} exceeds the largest captured size {self.max_batch}")
        self._stage(rows, size)
        if self.captured:
            graph, logits = self._graphs[size]
            graph.replay()
        else:
            logits = self._forward(size)
        self.replays += 1
        return logits[:len(rows)]

    def _stage(self, rows: list[DecodeRow], size: int) -> None:
        """Copy the step's host values into the first `size` buffer rows, padding the rest."""
        block_size = self.cache.block_size
        padding = size - len(rows)
        tables = torch.zeros(size, self.max_blocks, dtype=torch.int32)
        for i, row in enumerate(rows):
            if len(row.block_table) > self.max_blocks:
                raise ValueError(f"a sequence holds {len(row.block_table)} blocks, more than the {self.max_blocks} "
                                 "a decoder context can fill")
            tables[i, :len(row.block_table)] = torch.tensor(row.block_table, dtype=torch.int32)
        positions = [row.position for row in rows]
        slots = [row.block_table[p // block_size] * block_size + p % block_size for row, p in zip(rows, positions)]
        b = self.buffers
        b.tokens[:size, 0].copy_(torch.tensor([row.token for row in rows] + [0] * padding))
        b.positions[:size, 0].copy_(torch.tensor(positions + [0] * padding))
        b.block_tables[:size].copy_(tables)
        b.past_lens[:size].copy_(torch.tensor(positions + [0] * padding, dtype=torch.int32))
        b.context_lens[:size].copy_(torch.tensor([p + 1 for p in positions] + [1] * padding, dtype=torch.int32))
        b.slot_mapping[:size, 0].copy_(torch.tensor(slots + [-1] * padding))
        b.cross_slots[:size].copy_(torch.tensor([row.cross_slot for row in rows] + [0] * padding, dtype=torch.int32))
