"""Encoder work split across engine steps, as vLLM's chunked prefill splits long prompts: a batch of new windows
advances a few encoder layers per step, so running streams' decode steps never wait behind whole encoder passes.

On the CPU the encoder is most of a step (a tiny.en window costs about as much as 64 sequences' decode step), so
a step that encodes whole windows stretches every running stream's token gap; with --encoder-layers-per-step N a
step runs at most N layers of one batch of up to --max-encoder-windows-per-step windows. The windows hold their
cross-attention slots while they encode (marked `encoding`, so nothing reads them) and their requests are admitted
in the step their K/V is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from vllm_whisper.engine.request import Request


@dataclass
class EncodingBatch:
    """Windows being encoded together: one request per window (the one that started it) and the hidden states
    after `next_layer` encoder layers (None before the convolution stem)."""

    requests: list[Request] = field(default_factory=list)
    hidden: Tensor | None = None
    next_layer: int = 0


class ChunkedEncoder:
    """Which encoder layers the next step runs for the batch in flight; at most one batch at a time."""

    def __init__(self, num_layers: int, layers_per_step: int):
        if layers_per_step < 1:
            raise ValueError(f"encoder_layers_per_step must be at least 1, got {layers_per_step}")
        self.num_layers = num_layers
        self.layers_per_step = layers_per_step
        self.batch: EncodingBatch | None = None

    @property
    def busy(self) -> bool:
        return self.batch is not None

    def begin(self, requests: list[Request]) -> EncodingBatch:
        """Start a batch; the windows' slots are taken and marked encoding by the caller."""
        if self.batch is not None:
            raise RuntimeError("an encoder batch is already in flight")
        self.batch = EncodingBatch(list(requests))
        return self.batch

    def next_stop(self) -> int:
        """The layer index the next step encodes up to (exclusive)."""
        if self.batch is None:
            raise RuntimeError("no encoder batch in flight")
        return min(self.batch.next_layer + self.layers_per_step, self.num_layers)

    def end(self) -> EncodingBatch:
        """The batch is done (or abandoned): clear the windows' encoding marks and hand it back."""
        if self.batch is None:
            raise RuntimeError("no encoder batch in flight")
        batch, self.batch = self.batch, None
        for request in batch.requests:
            request.window.encoding = False
        return batch
