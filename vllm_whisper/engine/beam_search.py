"""Beam search as openai-whisper does it, on the engine's sequences.

Each step every beam proposes its beam_size + 1 best tokens; candidates are ranked by cumulative
log-probability (float32 sums, as the reference keeps them); those ending in end-of-text join the finished set
(at most round(beam_size * patience)), the best beam_size others become the new beams. The request ends when
the finished set is full or the token limit is reached; unfinished beams then fill it up to beam_size, and the
winner is the best log-probability / length penalty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from vllm_whisper.engine.request import Request


@dataclass
class BeamChoice:
    source: int  # index of the beam this candidate extends
    token: int
    score: float  # cumulative log-probability


def beam_update(request: Request, logprobs: Tensor) -> tuple[list[BeamChoice], bool]:
    """One step for one request: logprobs is (beams, vocab) after the logits rules. Returns the new beams and
    whether the finished set is full."""
    params, eot = request.params, request.params.rules.eot
    beam_size = params.beam_size
    top_values, top_tokens = logprobs.float().topk(beam_size + 1, dim=-1)
    scores: dict[tuple[int, ...], float] = {}
    sources: dict[tuple[int, ...], int] = {}
    for j, seq in enumerate(request.seqs):
        prefix = tuple(seq.output)
        base = np.float32(seq.sum_logprob)
        for logprob, token in zip(top_values[j].tolist(), top_tokens[j].tolist()):
            candidate = prefix + (token,)
            scores[candidate] = float(base + np.float32(logprob))
            sources[candidate] = j
    chosen: list[BeamChoice] = []
    newly_finished: dict[tuple[int, ...], float] = {}
    for candidate in sorted(scores, key=scores.get, reverse=True):
        if candidate[-1] == eot:
            newly_finished[candidate] = scores[candidate]
        else:
            chosen.append(BeamChoice(sources[candidate], candidate[-1], scores[candidate]))
            if len(chosen) == beam_size:
                break
    max_candidates = round(beam_size * params.patience)
    for candidate in sorted(newly_finished, key=newly_finished.get, reverse=True):
        if len(request.finished_beams) >= max_candidates:
            break
        request.finished_beams[candidate] = newly_finished[candidate]
    request.beam_steps += 1
    return chosen, len(request.finished_beams) >= max_candidates


def finalize(request: Request) -> tuple[list[int], float]:
    """The winning hypothesis (tokens without end-of-text) and its cumulative log-probability."""
    eot = request.params.rules.eot
    candidates = dict(request.finished_beams)
    if len(candidates) < request.params.beam_size:
        for seq in sorted(request.seqs, key=lambda s: s.sum_logprob, reverse=True):
            candidates[tuple(seq.output) + (eot,)] = seq.sum_logprob
            if len(candidates) >= request.params.beam_size:
                break
    best, best_score = None, -np.inf
    for candidate, logprob in candidates.items():
        length = len(candidate) - 1  # without end-of-text
        penalty = length if request.params.length_penalty is None else ((5 + length) / 6) ** request.params.length_penalty
        score = logprob / penalty if penalty else logprob
        if score > best_score:
            best, best_score = candidate, score
    return list(best[:-1]), candidates[best]
