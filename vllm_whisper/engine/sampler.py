"""Batched Whisper logits rules and sampling for one engine step.

The rules are the reference's (decoding/logits_rules.py), applied to a (batch, vocab) tensor at once with
per-row masks built from each row's history: suppress blank, suppress tokens, the timestamp pairing, monotonic
and initial-timestamp rules, and the logsumexp rule. Tests hold it equal to the per-row reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_whisper.decoding.logits_rules import LogitsRules


@dataclass(frozen=True)
class SamplingParams:
    """How one window's tokens are chosen.

    temperature: 0 is greedy; above 0 samples from softmax(logits / temperature).
    top_k / top_p: restrict sampling to the k most likely tokens / the smallest set with probability >= p.
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


@dataclass
class SamplerOutput:
    tokens: list[int]
    logprobs: list[float]  # log-probability of each chosen token under the ruled, untempered distribution


_mask_cache: dict[tuple[LogitsRules, int, str], tuple[Tensor, Tensor]] = {}


def _static_masks(rules: LogitsRules, vocab: int, device: torch.device) -> tuple[Tensor, Tensor]:
    key = (rules, vocab, str(device))
    if key not in _mask_cache:
        if len(_mask_cache) >= 64:  # many distinct per-request suppress lists: start over rather than grow
            _mask_cache.clear()
        suppress = torch.zeros(vocab, dtype=torch.bool, device=device)
        suppress[list(rules.suppress_tokens)] = True
        begin = torch.zeros(vocab, dtype=torch.bool, device=device)
        begin[list(rules.begin_suppress_tokens)] = True
        _mask_cache[key] = (suppress, begin)
    return _mask_cache[key]


def apply_rules(logits: Tensor, rules: list[LogitsRules], histories: list[list[int]]) -> Tensor:
    """Forbidden tokens of each row set to -inf; `histories` are the tokens sampled so far per row."""
    batch, vocab = logits.shape
    device = logits.device
    logits = logits.clone()
    masks = [_static_masks(r, vocab, device) for r in rules]
    suppress = torch.stack([m[0] for m in masks])
    begin = torch.stack([m[1] for m in masks])
    first = torch.tensor([not h for h in histories], device=device)
    blank_rows = first & torch.tensor([r.suppress_blank for r in rules], device=device)
    forbid = suppress | (begin & blank_rows[:, None])

    ts_rows = torch.tensor([r.timestamps for r in rules], device=device)
    if bool(ts_rows.any()):
        forbid |= _timestamp_masks(rules, histories, ts_rows, first, vocab, device)
    logits.masked_fill_(forbid, -torch.inf)
    if bool(ts_rows.any()):
        ts_begin = torch.tensor([r.timestamp_begin for r in rules], device=device)[:, None]
        col = torch.arange(vocab, device=device)[None, :]
        is_ts = col >= ts_begin
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        ts_mass = torch.logsumexp(logprobs.masked_fill(~is_ts, -torch.inf), dim=-1)
        max_text = logprobs.masked_fill(is_ts, -torch.inf).max(dim=-1).values
        force_ts = ts_rows & (ts_mass > max_text)
        logits.masked_fill_(force_ts[:, None] & ~is_ts, -torch.inf)
    return logits


def _timestamp_masks(rules: list[LogitsRules], histories: list[list[int]], ts_rows: Tensor, first: Tensor,
                     vocab: int, device: torch.device) -> Tensor:
    """Pairing, monotonic and initial-timestamp rules as one (batch, vocab) mask."""
    col = torch.arange(vocab, device=device)[None, :]
    eot, no_ts, ts_begin, floor, max_initial = [], [], [], [], []
    last_ts, penult_ts = [], []
    for r, h in zip(rules, histories):
        begin = r.timestamp_begin
        last = len(h) >= 1 and h[-1] >= begin
        penult = len(h) < 2 or h[-2] >= begin
        stamps = [t for t in h if t >= begin]
        eot.append(r.eot)
        no_ts.append(r.no_timestamps)
        ts_begin.append(begin)
        last_ts.append(last)
        penult_ts.append(penult)
        if stamps:
            floor.append(stamps[-1] if last and not penult else stamps[-1] + 1)
        else:
            floor.append(begin)
        initial = r.max_initial_timestamp_index
        max_initial.append(vocab if initial is None else begin + initial + 1)

    def column(values: list) -> Tensor:
        return torch.tensor(values, device=device)[:, None]

    eot_t, ts_t = column(eot), column(ts_begin)
    last_t, penult_t = column(last_ts), column(penult_ts)
    forbid = col == column(no_ts)
    forbid |= last_t & penult_t & (col >= ts_t)
    forbid |= last_t & ~penult_t & (col < eot_t)
    forbid |= (col >= ts_t) & (col < column(floor))
    forbid |= first[:, None] & ((col < ts_t) | (col >= column(max_initial)))
    return forbid & ts_rows[:, None]


def sample(logits: Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> SamplerOutput:
    """Choose one token per row from already-ruled logits."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = torch.argmax(logits, dim=-1)
    sampled_rows = [i for i, p in enumerate(params) if p.temperature > 0]
    for i in sampled_rows:
        p = params[i]
        scores = logits[i].float() / p.temperature
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
