"""Runs the model for a scheduled step: batched encoder for new windows (cross K/V projected once, straight
into their slots), then the decoder over the paged cache for the prefill and decode groups, then the step's
alignment passes over their windows' slots. One-token decode groups replay a captured CUDA graph when the engine
captured them (engine/cuda_graphs.py). Under a shortened audio context (engine/audio_context.py) windows are
encoded in groups of one length and each slot records how many frames it holds, which attention then reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vllm_whisper import _custom_ops as ops
from vllm_whisper.attention.kv_cache_layout import KVCacheTensors
from vllm_whisper.attention.metadata import PagedAttentionMetadata
from vllm_whisper.attention.selector import AttentionBackend, get_attention_backend
from vllm_whisper.engine.alignment import AlignmentOutput, AlignmentRequest
from vllm_whisper.engine.alignment_pass import AlignmentRow, alignment_heads, run_alignment_pass
from vllm_whisper.engine.audio_context import encoder_frames
from vllm_whisper.engine.chunked_encoder import EncodingBatch
from vllm_whisper.engine.encoder_batching import encoder_windows_per_call, micro_batches
from vllm_whisper.engine.request import Request, Sequence
from vllm_whisper.model_executor.whisper import CrossKV, WhisperModel

if TYPE_CHECKING:  # imported lazily: the graph module pulls in the Triton kernels
    from vllm_whisper.engine.cuda_graphs import DecodeGraphs


@dataclass
class RunnerCounters:
    encoder_runs: int = 0  # windows passed through the encoder
    cross_kv_projections: int = 0  # windows whose cross K/V were projected
    decoder_tokens: int = 0  # decoder positions computed (prefill and decode)
    graph_steps: int = 0  # decode groups that ran through a captured graph (or its eager stand-in)
    eager_steps: int = 0  # groups that ran eagerly (prefill, no graphs, or larger than every bucket)
    alignment_passes: int = 0  # windows aligned (word timestamps); one step's passes share one forward


@dataclass
class StepLogits:
    logits: Tensor  # (rows, vocab) at each row's last fed position
    no_speech_probs: list[float | None]  # per row, when its <|startoftranscript|> position was fed


class ModelRunner:
    def __init__(self, model: WhisperModel, cache: KVCacheTensors, no_speech_token: int,
                 backend: AttentionBackend | None = None, graphs: DecodeGraphs | None = None,
                 audio_context: str = "full"):
        self.model = model
        self.audio_context = audio_context
        self.max_frames = model.config.max_source_positions
        self.graphs = graphs
        self.backend = backend or get_attention_backend("torch", model.device)
        self.cache = cache
        self.no_speech_token = no_speech_token
        self.counters = RunnerCounters()

    def frames_for(self, request: Request | AlignmentRequest) -> int:
        """Encoder frames the request's window is encoded over: max_frames unless the audio context is shortened, and
        always for a window whose words will be aligned (an alignment pass, or a request that asks for it)."""
        if isinstance(request, AlignmentRequest) or request.full_audio_context:
            return self.max_frames
        return encoder_frames(self.audio_context, request.audio_seconds, self.max_frames)

    @torch.inference_mode()
    def encode(self, requests: list[Request | AlignmentRequest]) -> None:
        """Encode the windows of newly admitted requests and write their cross K/V into their slots; windows of
        different lengths (a shortened audio context) run as one batch per length."""
        groups: dict[int, list[Request | AlignmentRequest]] = {}
        for request in requests:
            groups.setdefault(self.frames_for(request), []).append(request)
        for frames, group in groups.items():
            for part in micro_batches(group, encoder_windows_per_call(self.model.device, frames)):
                features = torch.stack([r.features[:, :2 * frames] for r in part]).to(self.model.device)
                self._store_cross_kv(self.model.encode(features, attention=self.backend.encoder), part)

    @torch.inference_mode()
    def encode_chunk(self, batch: EncodingBatch, stop: int) -> bool:
        """Advance an encoder batch split across steps up to layer `stop`; True once its cross K/V are in the
        slots. Windows freed meanwhile (every request on them aborted) drop out before their slot is reused."""
        keep = [i for i, request in enumerate(batch.requests) if request.cross_slot is not None]
        if len(keep) < len(batch.requests):
            batch.requests = [batch.requests[i] for i in keep]
            if batch.hidden is not None and keep:
                batch.hidden = batch.hidden[keep]
        if not batch.requests:
            return True
        frames = self.frames_for(batch.requests[0])  # the engine batches windows of one length
        hidden = []
        for rows in micro_batches(range(len(batch.requests)), encoder_windows_per_call(self.model.device, frames)):
            mel = None
            if batch.hidden is None:
                mel = torch.stack([batch.requests[i].features[:, :2 * frames] for i in rows]).to(self.model.device)
            part = None if batch.hidden is None else batch.hidden[rows.start:rows.stop]
            hidden.append(self.model.encode_layers(part, mel, batch.next_layer, stop, self.backend.encoder))
        batch.hidden = hidden[0] if len(hidden) == 1 else torch.cat(hidden)
        batch.next_layer = stop
        if stop < len(self.model.encoder.layers):
            return False
        self._store_cross_kv(batch.hidden, batch.requests)
        return True

    def _store_cross_kv(self, encoder_out: Tensor, requests: list[Request | AlignmentRequest]) -> None:
        """Project the encoder states to every layer's cross K/V, written straight into the windows' slots (on the
        CPU a window at a time, as the encoder runs: engine/encoder_batching.py)."""
        size = encoder_windows_per_call(self.model.device, encoder_out.shape[1])
        if size is not None and size < len(requests):
            for rows in micro_batches(range(len(requests)), size):
                self._store_cross_kv(encoder_out[rows.start:rows.stop], requests[rows.start:rows.stop])
            return
        cross_kv = self.model.compute_cross_kv(encoder_out)
        slots = torch.tensor([r.cross_slot for r in requests], device=self.model.device)
        frames = encoder_out.shape[1]
        for layer, (k, v) in enumerate(cross_kv):  # vllm_whisper._C op when built, else the same torch copy
            k_cache, v_cache = self.cache.cross_k[layer], self.cache.cross_v[layer]
            if frames < self.max_frames:  # a shortened window fills the start of its slot (a strided view)
                k_cache, v_cache = k_cache[:, :, :frames], v_cache[:, :, :frames]
            ops.reshape_and_cache_cross(k, v, k_cache, v_cache, slots)
        for request in requests:
            request.window.frames = frames
        self.counters.encoder_runs += len(requests)
        self.counters.cross_kv_projections += len(requests)

    def slot_cross_kv(self, slot: int, frames: int | None = None) -> CrossKV:
        """Per layer, (1, heads, frames, head_dim) of the cross K/V one slot holds (frames: all 1500), in the model's
        dtype: views, or copies of a bfloat16 cache (--kv-cache-dtype)."""
        n = frames or self.max_frames
        dtype = self.model.dtype
        return [(k[slot:slot + 1, :, :n].to(dtype), v[slot:slot + 1, :, :n].to(dtype))
                for k, v in zip(self.cache.cross_k, self.cache.cross_v)]

    def align(self, requests: list[AlignmentRequest]) -> list[AlignmentOutput]:
        """One alignment forward for the step's alignment requests, each reading its window's slot."""
        rows = [AlignmentRow(self.slot_cross_kv(r.cross_slot, r.window.frames), r.prompt, r.params) for r in requests]
        outputs = run_alignment_pass(self.model, alignment_heads(self.model.config), requests[0].eot, rows)
        self.counters.alignment_passes += len(requests)
        return outputs

    @torch.inference_mode()
    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: give sequences private copies of blocks they shared with another beam."""
        if not copies:
            return
        source = torch.tensor([s for s, _ in copies], device=self.model.device)
        target = torch.tensor([d for _, d in copies], device=self.model.device)
        for cache in (*self.cache.self_k, *self.cache.self_v):
            cache[target] = cache[source]

    @torch.inference_mode()
    def run(self, seqs: list[Sequence]) -> StepLogits:
        """Feed every sequence's pending tokens through the decoder; return logits at each last position."""
        feeds = [r.pending_tokens for r in seqs]
        self.model.check_position(max(seq.num_computed + len(feed) for seq, feed in zip(seqs, feeds)) - 1)
        if self._fits_graph(seqs, feeds):
            step = self._run_graph(seqs, feeds)
            self.counters.graph_steps += 1
        else:
            step = self._run_eager(seqs, feeds)
            self.counters.eager_steps += 1
        for seq, feed in zip(seqs, feeds):
            seq.num_computed += len(feed)
        self.counters.decoder_tokens += sum(len(f) for f in feeds)
        return step

    def _fits_graph(self, seqs: list[Sequence], feeds: list[list[int]]) -> bool:
        """One token per row, a bucket that holds the batch, and no row that reads its no-speech probability (that
        position is in the prompt, so only a prefill or a recompute after preemption feeds it)."""
        if self.graphs is None or self.graphs.bucket(len(seqs)) is None:
            return False
        return all(len(feed) == 1 for feed in feeds) and not any(self._no_speech_row(seq, 1) for seq in seqs)

    @staticmethod
    def _no_speech_row(seq: Sequence, fed: int) -> bool:
        index = seq.request.params.no_speech_index
        return index is not None and seq.num_computed <= index < seq.num_computed + fed

    def _run_graph(self, seqs: list[Sequence], feeds: list[list[int]]) -> StepLogits:
        from vllm_whisper.engine.cuda_graphs import DecodeRow

        rows = [DecodeRow(feed[0], seq.num_computed, seq.block_table, seq.request.cross_slot, seq.request.cross_frames)
                for seq, feed in zip(seqs, feeds)]
        return StepLogits(self.graphs.run(rows), [None] * len(seqs))

    def _cross_lens(self, seqs: list[Sequence]) -> list[int] | None:
        """Frames each row's slot holds, or None when every slot is full (the metadata then skips the lengths)."""
        lens = [seq.request.cross_frames or self.max_frames for seq in seqs]
        return None if all(n == self.max_frames for n in lens) else lens

    def _run_eager(self, seqs: list[Sequence], feeds: list[list[int]]) -> StepLogits:
        device = self.model.device
        t_max = max(len(f) for f in feeds)
        tokens = torch.tensor([f + [0] * (t_max - len(f)) for f in feeds])
        starts = torch.tensor([r.num_computed for r in seqs])[:, None]
        lengths = torch.tensor([len(f) for f in feeds])[:, None]
        # Padding positions repeat each row's last real position (their outputs are ignored, nothing is cached).
        positions = starts + torch.minimum(torch.arange(t_max)[None, :], lengths - 1)
        metadata = PagedAttentionMetadata.build(
            [r.block_table for r in seqs], [r.num_computed for r in seqs], [len(f) for f in feeds],
            [r.request.cross_slot for r in seqs], self.cache.block_size, device, self._cross_lens(seqs),
        )
        hidden = self.model.decode(tokens.to(device), positions.to(device), self.backend.decoder(self.cache, metadata),
                                   max_position=int(positions.max()))
        last = torch.tensor([len(f) - 1 for f in feeds], device=device)
        logits = self.model.compute_logits(hidden[torch.arange(len(seqs), device=device), last])
        no_speech: list[float | None] = []
        for b, seq in enumerate(seqs):
            if self._no_speech_row(seq, len(feeds[b])):
                row = self.model.compute_logits(hidden[b, seq.request.params.no_speech_index - seq.num_computed])
                no_speech.append(float(torch.softmax(row, dim=-1)[self.no_speech_token]))
            else:
                no_speech.append(None)
        return StepLogits(logits, no_speech)
