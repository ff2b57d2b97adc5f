"""CUDA graphs for one-token decode steps at bucketed batch sizes.

A decode step is a few dozen small kernels per decoder layer; for Whisper's narrow decoders the CPU launching them,
not the GPU, bounds the step. Replaying a captured graph launches them all at once. A step of B sequences runs the
graph of the smallest bucket >= B over fixed-shape input buffers: token ids, positions, block tables of fixed width
(max_target_positions / block_size columns), lengths, the new tokens' cache slots and each row's cross-attention
slot with the frames it holds. Rows past B are padding: they write no K/V (slot -1), attend one key of block 0 and
read one frame of slot 0's cross K/V; their logits are dropped. Prefill steps (a window's first step, which feeds
the whole prompt) stay eager.

Graphs need the Triton backend: its kernels read every length and slot from device tensors, so nothing a launch
depends on changes between replays (the torch reference picks shapes and branches on host values each step).
Without CUDA the same buffers and forward run eagerly (`capture=False`): that is how the padding and the fixed-width
tables are tested on the CPU under the Triton interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_whisper.attention.kv_cache_layout import KVCacheTensors
from vllm_whisper.attention.triton_backend import TritonPagedAttention
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
    cross_frames: int | None = None  # frames the slot holds (a shortened audio context); None: all of them


class DecodeBuffers:
    """The step's inputs for every bucket's graph, packed in one int64 matrix so a step stages them with one host
    copy and one host-to-device copy; a bucket of N reads the first N rows, so one set serves all sizes. The graphs
    derive the kernels' int32 tables and lengths from it on the device. Columns: token, position (= tokens cached
    before the step), the new token's flat cache slot (-1: padding, writes nothing), cross-attention slot, the
    frames that slot holds (padding: 1), then the block table (zero-padded). The host copy is pinned on CUDA and
    reused: a step stages only after the previous step's sampled tokens reached the host, so its copy has finished."""

    TOKEN, POSITION, SLOT, CROSS_SLOT, CROSS_LEN, TABLE = 0, 1, 2, 3, 4, 5

    def __init__(self, max_batch: int, max_blocks: int, device: torch.device, max_frames: int):
        self.max_blocks = max_blocks
        self.max_frames = max_frames
        width = self.TABLE + max_blocks
        self.host = torch.zeros(max_batch, width, dtype=torch.long, pin_memory=device.type == "cuda")
        self.device = torch.zeros(max_batch, width, dtype=torch.long, device=device)
        self.device[:, self.SLOT] = -1  # all padding until the first step: captures write nothing
        self.device[:, self.CROSS_LEN] = 1

    @staticmethod
    def padding_row(width: int) -> list[int]:
        row = [0] * width
        row[DecodeBuffers.SLOT] = -1
        row[DecodeBuffers.CROSS_LEN] = 1
        return row

    def stage(self, rows: list[DecodeRow], size: int, block_size: int) -> None:
        """Write the step's rows, then padding up to `size`, and copy them to the device."""
        longest = max(len(row.block_table) for row in rows)
        if longest > self.max_blocks:
            raise ValueError(f"a sequence holds {longest} blocks, more than the {self.max_blocks} a decoder context "
                             "can fill")
        width = self.TABLE + self.max_blocks
        packed = [[row.token, row.position,
                   row.block_table[row.position // block_size] * block_size + row.position % block_size,
                   row.cross_slot, row.cross_frames or self.max_frames, *row.block_table,
                   *[0] * (self.max_blocks - len(row.block_table))]
                  for row in rows]
        packed += [self.padding_row(width)] * (size - len(rows))
        self.host[:size].copy_(torch.tensor(packed, dtype=torch.long))
        self.device[:size].copy_(self.host[:size], non_blocking=True)


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
        self.buffers = DecodeBuffers(self.max_batch, self.max_blocks, model.device, cache.cross_k[0].shape[2])
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
        b, packed = self.buffers, self.buffers.device[:size]
        position = packed[:, b.POSITION]
        attention = TritonPagedAttention.from_tensors(
            self.cache, packed[:, b.TABLE:].to(torch.int32), position.to(torch.int32), (position + 1).to(torch.int32),
            packed[:, b.SLOT:b.SLOT + 1], packed[:, b.CROSS_SLOT].to(torch.int32),
            packed[:, b.CROSS_LEN].to(torch.int32),
        )
        hidden = self.model.decoder(packed[:, b.TOKEN:b.TOKEN + 1], packed[:, b.POSITION:b.POSITION + 1], attention)
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
        self.buffers.stage(rows, size, self.cache.block_size)
        if self.captured:
            graph, logits = self._graphs[size]
            graph.replay()
        else:
            logits = self._forward(size)
        self.replays += 1
        return logits[:len(rows)]
