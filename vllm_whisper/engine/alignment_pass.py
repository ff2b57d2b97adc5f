"""The alignment pass on the model (the openai-whisper method): prompt + text + <|endoftext|> teacher-forced
through the decoder at once, several windows padded to a common length, recording the alignment heads'
cross-attention scores; per window these become a token x frame similarity (softmax over the audio's frames,
standardised per frame, median-filtered along time, averaged over heads) and each text token's probability."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vllm_whisper.engine.alignment import AlignmentOutput, AlignmentParams
from vllm_whisper.model_executor.whisper import ContiguousKVCache, CrossKV, WhisperModel
from vllm_whisper.model_executor.whisper_config import WhisperConfig


def alignment_heads(config: WhisperConfig) -> list[tuple[int, int]]:
    """The checkpoint's (layer, head) alignment heads, or every head of the upper half of the decoder."""
    if config.alignment_heads:
        return [(int(layer), int(head)) for layer, head in config.alignment_heads]
    first = config.decoder_layers // 2
    return [(layer, head) for layer in range(first, config.decoder_layers)
            for head in range(config.decoder_attention_heads)]


def median_filter(x: Tensor, width: int) -> Tensor:
    """Median over a sliding window of odd `width` along the last axis, reflect-padded at both ends."""
    if width < 1 or width % 2 == 0:
        raise ValueError(f"median filter width must be a positive odd number, got {width}")
    pad = width // 2
    if x.shape[-1] <= pad or width == 1:
        return x  # too short to reflect-pad: leave as is, like the reference
    lead = x.shape[:-1]
    flat = x.reshape(1, -1, x.shape[-1])
    padded = F.pad(flat, (pad, pad), mode="reflect")
    return padded.unfold(-1, width, 1).sort(dim=-1).values[..., pad].reshape(*lead, x.shape[-1])


@dataclass
class AlignmentRow:
    """One window of a batched pass: its cross K/V (batch 1, e.g. views of its slot), prompt and text."""

    cross_kv: CrossKV
    prompt: list[int]
    params: AlignmentParams


class _RecordingAttention(ContiguousKVCache):
    """The contiguous reference attention, each batch row over its own window's cross K/V, also keeping the
    pre-softmax cross-attention scores q.k/sqrt(d) of the chosen heads, so the decoder itself needs no hooks."""

    def __init__(self, cross_kvs: list[CrossKV], heads: Sequence[tuple[int, int]]):
        super().__init__(len(cross_kvs[0]), cross_kvs[0])
        self.cross_kvs = cross_kvs
        self.heads = list(heads)
        self._heads_by_layer: dict[int, list[int]] = {}
        for layer, head in self.heads:
            self._heads_by_layer.setdefault(layer, []).append(head)
        self._scores: list[dict[tuple[int, int], Tensor]] = [{} for _ in cross_kvs]

    def cross_attend(self, layer: int, q: Tensor) -> Tensor:
        heads = self._heads_by_layer.get(layer)
        if heads:
            index = torch.tensor(heads, device=q.device)
            for row, cross_kv in enumerate(self.cross_kvs):
                k = cross_kv[layer][0][0, index].float()
                scores = q[row, index].float() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
                for head, head_scores in zip(heads, scores):
                    self._scores[row][(layer, head)] = head_scores
        if len(self.cross_kvs) == 1:
            return super().cross_attend(layer, q)
        return torch.cat([F.scaled_dot_product_attention(q[row:row + 1], *cross_kv[layer])
                          for row, cross_kv in enumerate(self.cross_kvs)])

    def scores(self, row: int) -> Tensor:
        """(heads, tokens, encoder frames) scores of every recorded head of one row, in self.heads order."""
        missing = [h for h in self.heads if h not in self._scores[row]]
        if missing:
            raise ValueError(f"alignment heads {missing} are not in this model's decoder")
        return torch.stack([self._scores[row][h] for h in self.heads])


def alignment_matrix(scores: Tensor, num_frames: int, medfilt_width: int, qk_scale: float) -> Tensor:
    """Token x frame similarity: per-head softmax over the audio's frames, per-frame standardisation across
    tokens, median filter along time, mean over heads."""
    weights = (scores[:, :, : num_frames // 2] * qk_scale).softmax(dim=-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = (weights - mean) / std.clamp_min(1e-10)
    return median_filter(weights, medfilt_width).mean(dim=0)


@torch.inference_mode()
def run_alignment_pass(model: WhisperModel, heads: Sequence[tuple[int, int]], eot: int,
                       rows: Sequence[AlignmentRow]) -> list[AlignmentOutput]:
    """One decoder forward over every row (padded after its <|endoftext|>, which causal attention never reads);
    returns each row's DTW-ready matrix and text-token probabilities."""
    tokens = [row.prompt + list(row.params.text_tokens) + [eot] for row in rows]
    limit = model.config.max_target_positions
    for row, row_tokens in zip(rows, tokens):
        if len(row_tokens) > limit:
            raise ValueError(f"{len(row.params.text_tokens)} text tokens plus the prompt exceed the decoder's "
                             f"{limit} positions")
    longest = max(len(t) for t in tokens)
    recorder = _RecordingAttention([row.cross_kv for row in rows], heads)
    ids = torch.tensor([t + [0] * (longest - len(t)) for t in tokens], device=model.device)
    positions = torch.arange(longest, device=model.device)[None].expand(len(rows), -1)
    hidden = model.decode(ids, positions, recorder, max_position=longest - 1)
    outputs = []
    for index, row in enumerate(rows):
        text = list(row.params.text_tokens)
        first, last = len(row.prompt) - 1, len(row.prompt) - 1 + len(text)
        logits = model.compute_logits(hidden[index, first:last])[:, :eot]
        picks = torch.arange(len(text), device=logits.device)
        probs = logits.softmax(dim=-1)[picks, torch.tensor(text, device=logits.device)]
        matrix = alignment_matrix(recorder.scores(index)[:, first:last + 1], row.params.num_frames,
                                  row.params.medfilt_width, row.params.qk_scale)
        outputs.append(AlignmentOutput(matrix.double().cpu().numpy(), probs.tolist()))
    return outputs
