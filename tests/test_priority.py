"""Priority admission: a lower priority value is admitted first, and best-effort windows (realtime partial passes)
are not encoded while more urgent work runs, so live sessions cannot starve uploads. Deferred requests with a
latency budget (realtime turns' final passes) yield to uploads only until the budget runs out."""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.engine.sampler import SamplingParams
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.testing.engine_runs import run_to_completion
from vllm_whisper.transcribe.sequential import build_rules


def jobs(loaded, count: int, new_tokens: int = 6, run_to_length: bool = False):
    """Windows of random features; run_to_length suppresses end-of-text so each decodes exactly new_tokens."""
    gen = torch.Generator().manual_seed(0)
    rules = build_rules(loaded, TranscriptionParams(timestamps=False))
    if run_to_length:
        rules = replace(rules, suppress_tokens=rules.suppress_tokens + (rules.eot,))
    prompt = loaded.tokenizer.sot_sequence(None, "transcribe", timestamps=False)
    params = SamplingParams(rules, max_new_tokens=new_tokens)
    return [(f"r{i}", torch.randn(80, 3000, generator=gen), prompt, params) for i in range(count)]


def test_urgent_requests_overtake_waiting_best_effort_ones(tiny_en):
    engine = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=200, num_cross_slots=8, max_encoder_windows_per_step=1))
    work = jobs(tiny_en, 4)
    for request_id, features, prompt, params in work[:3]:
        engine.add_request(f"best-effort-{request_id}", features, prompt, params, priority=1)
    engine.add_request("urgent", *work[3][1:], priority=0)
    order = []
    while engine.has_unfinished_requests():
        order += [r.request_id for r in engine.scheduler.running if r.request_id not in order]
        engine.step()
    assert order[0] == "urgent"


def test_best_effort_windows_wait_while_urgent_work_runs(tiny_en):
    engine = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=200, num_cross_slots=8, max_encoder_windows_per_step=4))
    work = jobs(tiny_en, 3, new_tokens=5)
    engine.add_request("urgent", *work[0][1:], priority=0)
    engine.add_request("partial-a", *work[1][1:], priority=1)
    engine.add_request("partial-b", *work[2][1:], priority=1)
    steps_with_urgent_and_partial = 0
    finished = {}
    while engine.has_unfinished_requests():
        running = {r.request_id for r in engine.scheduler.running}
        steps_with_urgent_and_partial += "urgent" in running and bool(running - {"urgent"})
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.tokens
    assert steps_with_urgent_and_partial == 0 and set(finished) == {"urgent", "partial-a", "partial-b"}
    # priorities change the order, never the tokens
    plain = run_to_completion(LLMEngine(tiny_en, EngineConfig(num_kv_blocks=200, num_cross_slots=8)),
                              [("urgent", *work[0][1:]), ("partial-a", *work[1][1:]), ("partial-b", *work[2][1:])])
    assert {k: v.tokens for k, v in plain.items()} == finished


def test_running_best_effort_requests_pause_while_urgent_work_runs(tiny_en):
    """A realtime partial pass already decoding feeds no token while an upload runs, then finishes unchanged."""
    engine = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=200, num_cross_slots=8))
    work = jobs(tiny_en, 2, new_tokens=8, run_to_length=True)
    engine.add_request("partial", *work[0][1:], priority=1)
    engine.step()
    engine.step()
    partial = engine.requests["partial"]
    engine.add_request("urgent", *work[1][1:], priority=0)
    paused_steps = 0
    finished = {}
    while engine.has_unfinished_requests():
        before = len(partial.seqs[0].output)
        urgent_running = any(r.request_id == "urgent" for r in engine.scheduler.running)
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.tokens
        if urgent_running and "urgent" not in finished:
            assert len(partial.seqs[0].output) == before
            paused_steps += 1
    assert paused_steps >= 6 and list(finished)[0] == "urgent"
    plain = run_to_completion(LLMEngine(tiny_en, EngineConfig(num_kv_blocks=200, num_cross_slots=8)),
                              [("partial", *work[0][1:]), ("urgent", *work[1][1:])])
    assert {k: v.tokens for k, v in plain.items()} == finished


def test_urgent_request_takes_room_from_paused_best_effort_ones(tiny_en):
    """With room for two sequences, a second upload preempts the paused partial pass instead of waiting for it."""
    engine = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=200, num_cross_slots=8, max_num_seqs=2))
    work = jobs(tiny_en, 3, new_tokens=8, run_to_length=True)
    engine.add_request("partial", *work[0][1:], priority=1)
    engine.step()
    engine.add_request("urgent-1", *work[1][1:], priority=0)
    engine.step()
    engine.add_request("urgent-2", *work[2][1:], priority=0)
    finished = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.tokens
    assert list(finished)[-1] == "partial" and engine.scheduler.num_preemptions == 1
    plain = run_to_completion(LLMEngine(tiny_en, EngineConfig(num_kv_blocks=200, num_cross_slots=8)),
                              [(request_id, *job[1:]) for request_id, job in zip(["partial", "urgent-1", "urgent-2"],
                                                                                   work)])
    assert {k: v.tokens for k, v in plain.items()} == finished


def test_best_effort_windows_are_encoded_one_per_step(tiny_en):
    """An urgent arrival waits for at most one best-effort window's encoder pass; urgent windows batch as usual."""
    engine = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=200, num_cross_slots=8, max_encoder_windows_per_step=4))
    work = jobs(tiny_en, 6)
    for request_id, features, prompt, params in work[:3]:
        engine.add_request(f"partial-{request_id}", features, prompt, params, priority=1)
    assert len(engine.scheduler.schedule().encode) == 1
    engine = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=200, num_cross_slots=8, max_encoder_windows_per_step=4))
    for request_id, features, prompt, params in work[3:]:
        engine.add_request(f"upload-{request_id}", features, prompt, params)
    assert len(engine.scheduler.schedule().encode) == 3


def test_deferred_request_counts_as_urgent_once_its_budget_runs_out(tiny_en):
    """A realtime turn (priority 1) whose budget has run out goes ahead of an upload that arrived after it; one
    within its budget waits behind the upload."""
    work = jobs(tiny_en, 2)
    orders = {}
    for budget in (0.0, 3600.0):
        engine = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=200, num_cross_slots=8, max_encoder_windows_per_step=1))
        engine.add_request("turn", *work[0][1:], priority=1, urgent_after=budget)
        engine.add_request("upload", *work[1][1:], priority=0)
        orders[budget] = [r.request_id for r in engine.scheduler.waiting]
        order = []
        while engine.has_unfinished_requests():
            engine.step()
            order += [r.request_id for r in engine.scheduler.running if r.request_id not in order]
        orders[budget] = order
    assert orders == {0.0: ["turn", "upload"], 3600.0: ["upload", "turn"]}


def test_paused_deferred_request_resumes_when_its_budget_runs_out(tiny_en):
    """A decoding turn pauses while an upload runs, and feeds tokens beside it again once its budget is spent."""
    engine = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=200, num_cross_slots=8))
    work = jobs(tiny_en, 2, new_tokens=12, run_to_length=True)
    engine.add_request("turn", *work[0][1:], priority=1, urgent_after=600.0)
    engine.step()
    engine.add_request("upload", *work[1][1:], priority=0)
    engine.step()  # admits the upload; the turn pauses
    turn = engine.requests["turn"]
    before = len(turn.seqs[0].output)
    engine.step()
    assert len(turn.seqs[0].output) == before and turn.priority == 1
    engine.scheduler.clock = lambda: time.monotonic() + 600.0  # ten minutes later: the turn's budget has run out
    engine.step()
    assert turn.priority == 0 and len(turn.seqs[0].output) == before + 1
    finished = {}
    while engine.has_unfinished_requests():
        finished.update({out.request_id: out.tokens for out in engine.step() if out.finished})
    plain = run_to_completion(LLMEngine(tiny_en, EngineConfig(num_kv_blocks=200, num_cross_slots=8)),
                              [("turn", *work[0][1:]), ("upload", *work[1][1:])])
    assert {k: v.tokens for k, v in plain.items()} == finished


def test_negative_budget_is_refused(tiny_en):
    engine = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=20, num_cross_slots=1))
    work = jobs(tiny_en, 1)
    try:
        engine.add_request("turn", *work[0][1:], priority=1, urgent_after=-1.0)
    except ValueError as exc:
        assert "urgent_after" in str(exc)
    else:
        raise AssertionError("a negative budget was accepted")
