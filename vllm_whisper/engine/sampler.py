"""Sampling for one engine step: each window's SamplingParams and the choice of one token per row.

The logits arrive already ruled: Whisper's logits rules live in vllm_whisper/sampling/ (the engine applies them
through _custom_ops.apply_whisper_logits_rules, the C++/CUDA op or its torch fallback sampling/batched.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_whisper.sampling.rules import LogitsRules


@dataclass(frozen=True)
class SamplingParams:
    """How one window's tokens are chosen.

    temperature: 0 is greedy; above 0 samples from softmax(logits / temperature).
    top_k / top_p / min_p: restrict sampling to the k most likely tokens / the smallest set with probability >= p /
        tokens at least min_p times as likely as the most likely one (vLLM's order: min_p, then top-k and top-p).
    repetition_penalty / frequency_penalty / presence_penalty: vLLM's penalties on text tokens already seen
        (engine/penalties.py); applied after Whisper's rules, in greedy decoding and beam search too.
    seed: makes sampling reproducible per request.
    beam_size: beams for beam search (1: off); beams share the window's cross-attention slot and, copy-on-write,
        their common self-attention blocks.
    patience: beam search stops once round(beam_size * patience) hypotheses have ended (openai-whisper's rule).
    length_penalty: None ranks finished beams by log-probability / length; a value alpha uses the Google NMT
        penalty ((5 + length) / 6) ** alpha.
    max_new_tokens: most tokens sampled for the window.
    no_speech_index: prompt position of <|startoftranscript|>, where the no-speech probability is read.
    """

    rules: LogitsRules
    max_new_tokens: int = 224
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    beam_size: int = 1
    patience: float = 1.0
    length_penalty: float | None = None
    no_speech_index: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not self.repetition_penalty > 0.0:
            raise ValueError(f"repetition_penalty must be greater than 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
        if self.beam_size > 1 and self.temperature > 0:
            raise ValueError("beam search is deterministic: use temperature 0 with beam_size > 1")
        if self.patience <= 0:
            raise ValueError(f"patience must be positive, got {self.patience}")
        if self.length_penalty is not None and not 0.0 <= self.length_penalty <= 1.0:
            raise ValueError(f"length_penalty must be between 0 and 1, got {self.length_penalty}")

    @property
    def has_penalties(self) -> bool:
        """Whether any penalty changes the logits (the default leaves the fast path untouched)."""
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


@dataclass
class SamplerOutput:
    tokens: list[int]
    logprobs: list[float]  # log-probability of each chosen token under the ruled, untempered distribution


def sample(logits: Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
           logprob_logits: Tensor | None = None) -> SamplerOutput:
    """Choose one token per row from already-ruled (and penalised) logits; the reported log-probabilities come from
    logprob_logits when given (the ruled logits before penalties), else from logits."""
    logprobs = torch.log_softmax((logits if logprob_logits is None else logprob_logits).float(), dim=-1)
    chosen = torch.argmax(logits, dim=-1)
    sampled_rows = [i for i, p in enumerate(params) if p.temperature > 0]
    for i in sampled_rows:
        p = params[i]
        scores = logits[i].float() / p.temperature
        if p.min_p > 0.0:
            probs = torch.softmax(scores, dim=-1)
            scores = scores.masked_fill(probs < p.min_p * probs.max(), -torch.inf)
        if p.top_k > 0:
            kth = torch.topk(scores, min(p.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, -torch.inf)
        if p.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
            drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= p.top_p
            scores[order[drop]] = -torch.inf
        probs = torch.softmax(scores, dim=-1)
        chosen[i] = torch.multinomial(probs, 1, generator=generators[i]).squeeze(0)
    tokens = chosen.tolist()
    picked = logprobs.gather(1, chosen[:, None]).squeeze(1).tolist()
    return SamplerOutput(tokens, picked)
