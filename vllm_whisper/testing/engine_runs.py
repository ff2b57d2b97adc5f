"""Drive a synchronous engine until its requests finish, and compare two runs (tests and benchmarks)."""

from __future__ import annotations

import math
import random
from typing import Iterable

import torch

from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.engine.request import RequestOutput
from vllm_whisper.engine.sampler import SamplingParams
from vllm_whisper.model_executor.loader import LoadedModel


def run_to_completion(engine: LLMEngine, jobs: Iterable[tuple] = ()) -> dict[str, RequestOutput]:
    """Add each (request_id, features, prompt, params) job, step until idle, return the final outputs by id."""
    for request_id, features, prompt, params in jobs:
        engine.add_request(request_id, features, prompt, params)
    finished: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out
    return finished


def run_with_random_aborts(engine: LLMEngine, windows: list, specs: list[tuple], reference: dict, total: int,
                           rng: random.Random, max_arrivals: int) -> tuple[int, set[str]]:
    """Submit `total` requests (a random window and (prompt, params) spec each, up to max_arrivals - 1 per step),
    abort a random live one in 30% of steps, and check every finished request's tokens against
    reference[(window, spec)]. Returns (requests checked, ids aborted)."""
    submitted, aborted, checked, keys = 0, set(), 0, {}
    while submitted < total or engine.has_unfinished_requests():
        for _ in range(rng.randrange(0, max_arrivals)):
            if submitted < total:
                key = (rng.randrange(len(windows)), rng.randrange(len(specs)))
                engine.add_request(f"r{submitted}", windows[key[0]], *specs[key[1]])
                keys[f"r{submitted}"] = key
                submitted += 1
        if engine.requests and rng.random() < 0.3:
            victim = rng.choice(sorted(engine.requests))
            if not engine.abort_request(victim):
                raise AssertionError(f"abort_request({victim!r}) found no live request")
            aborted.add(victim)
        for out in engine.step():
            if out.finished:
                if out.request_id in aborted:
                    raise AssertionError(f"aborted request {out.request_id} finished")
                if out.tokens != reference[keys[out.request_id]]:
                    raise AssertionError(f"{out.request_id}: tokens differ from the reference")
                checked += 1
    return checked, aborted


def random_window_jobs(loaded: LoadedModel, count: int, seed: int, new_tokens: tuple[int, int] = (5, 12),
                       beam_last: bool = True) -> list[tuple]:
    """`count` windows of random log-mel features: greedy requests of random lengths in [new_tokens) with
    alternating timestamp rules (no-speech read at the first prompt token) and, with beam_last, two beams last."""
    from vllm_whisper.params import TranscriptionParams
    from vllm_whisper.transcribe.sequential import build_rules

    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    jobs = []
    for i in range(count):
        timestamps = i % 2 == 0
        rules = build_rules(loaded, TranscriptionParams(timestamps=timestamps))
        prompt = loaded.tokenizer.sot_sequence(None, "transcribe", timestamps)
        beams = 2 if beam_last and i == count - 1 else 1
        params = SamplingParams(rules, max_new_tokens=rng.randrange(*new_tokens), no_speech_index=0, beam_size=beams)
        jobs.append((f"r{i}", torch.randn(loaded.config.num_mel_bins, 3000, generator=gen), prompt, params))
    return jobs


def outputs_differ(got: dict[str, RequestOutput], want: dict[str, RequestOutput], logprob_tol: float = 1e-3,
                   no_speech_tol: float = 1e-5) -> list[str]:
    """Ids of requests missing from either run, or whose tokens differ, or whose summed log-probability or
    no-speech probability part by more than the tolerances."""
    differ = sorted(set(got) ^ set(want))
    for request_id in sorted(set(got) & set(want)):
        a, b = got[request_id], want[request_id]
        if (a.tokens != b.tokens or abs(a.sum_logprob - b.sum_logprob) > logprob_tol
                or not _close_or_both_nan(a.no_speech_prob, b.no_speech_prob, no_speech_tol)):
            differ.append(request_id)
    return differ


def _close_or_both_nan(a: float, b: float, tol: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol
