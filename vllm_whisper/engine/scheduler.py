"""Which requests run this step: keep decoding the running ones, preempt by recompute when blocks run out,
and admit waiting windows first-come-first-served while sequences, slots, blocks and budgets allow. Alignment
passes (word timestamps) need no blocks: the waiting ones run together, up to the batched-token budget.

A deferred request (a less urgent priority with a latency budget, `Request.urgent_after`) counts as priority 0
once its budget has run out (promotions.py): it then goes ahead of urgent requests that arrived after it.

Beams share blocks after a fork; before a sequence writes into a shared, partly filled block it gets its own
copy (copy-on-write), which the runner performs at the start of the step.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.alignment import AlignmentRequest
from vllm_whisper.engine.kv_cache import BlockPool, SlotPool
from vllm_whisper.engine.promotions import Promotions
from vllm_whisper.engine.request import Request, RequestStatus, Sequence


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


@dataclass
class SchedulerOutput:
    # new windows: run the encoder, fill their slots
    encode: list[Request | AlignmentRequest] = field(default_factory=list)
    prefill: list[Sequence] = field(default_factory=list)  # feed the whole uncached context
    decode: list[Sequence] = field(default_factory=list)  # feed one token
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # (source, destination) copy-on-write
    preempted: list[Request] = field(default_factory=list)
    align: list[AlignmentRequest] = field(default_factory=list)  # alignment passes, run after the decoder groups
    paused: list[Request] = field(default_factory=list)  # running best-effort requests feeding no token this step

    @property
    def is_empty(self) -> bool:
        return not (self.prefill or self.decode or self.align)


class Scheduler:
    def __init__(self, config: EngineConfig, blocks: BlockPool, slots: SlotPool, encoder_windows_per_step: int,
                 encode_in_step: bool = True):
        self.config = config
        self.encoder_windows_per_step = encoder_windows_per_step
        # False when the engine encodes new windows across steps (chunked_encoder.py): a request is admitted once
        # its window's K/V are written, never encoded in the step that admits it.
        self.encode_in_step = encode_in_step
        self.blocks = blocks
        self.slots = slots
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.alignments: deque[AlignmentRequest] = deque()
        self.promotions = Promotions()
        self.clock = time.monotonic  # what deferred requests' budgets are measured on (Request.arrival_time's clock)
        self.num_preemptions = 0

    @property
    def num_running_seqs(self) -> int:
        return sum(r.num_seqs_reserved for r in self.running)

    def add(self, request: Request) -> None:
        """Queue behind every waiting request of the same or a more urgent (lower) priority."""
        self.promotions.track(request)
        self._enqueue(request)

    def _enqueue(self, request: Request) -> None:
        if not self.waiting or self.waiting[-1].priority <= request.priority:
            self.waiting.append(request)
            return
        index = next(i for i, waiting in enumerate(self.waiting) if waiting.priority > request.priority)
        self.waiting.insert(index, request)

    def add_alignment(self, request: AlignmentRequest) -> None:
        self.alignments.append(request)

    def schedule(self) -> SchedulerOutput:
        """This step's work: see the module docstring; best-effort requests wait (new windows) or pause (running
        ones) while more urgent requests run."""
        out = SchedulerOutput()
        if self.promotions:
            self._promote(self.clock())
        token_budget = self.config.max_num_batched_tokens
        # 1. Running sequences each feed one token; make room for it, preempting the newest request if needed. A
        # best-effort request (a larger priority value than the most urgent running one) pauses: it keeps its blocks
        # and slot but feeds no token, so a decode step costs what the urgent work alone costs; it resumes when the
        # urgent work is done. Realtime partial passes are such requests: an upload never waits behind them.
        still_running: list[Request] = []
        most_urgent = min((r.priority for r in self.running), default=None)
        queue = deque(self.running)
        while queue:
            request = queue.popleft()
            if request.priority > most_urgent:
                still_running.append(request)
                out.paused.append(request)
                continue
            needed = sum(self._blocks_to_grow(seq) for seq in request.seqs)
            while needed > 0 and not self.blocks.can_allocate(needed):
                victim = out.paused.pop() if out.paused else queue.pop() if queue else request
                if victim in still_running:
                    still_running.remove(victim)
                self._preempt(victim, out)
                if victim is request:
                    break
            if request.status is not RequestStatus.RUNNING:
                continue
            for seq in request.seqs:
                self._grow(seq, out)
            still_running.append(request)
            out.decode += request.seqs
            token_budget -= len(request.seqs)
        self.running = still_running
        # 2. Admit waiting requests by priority, then arrival (preempted ones were put back at the front of their
        # priority). A best-effort request (a larger priority value) is not admitted while more urgent work runs:
        # the encoder is most of a CPU step, so it would slow every urgent request's tokens. An urgent request that
        # does not fit takes the sequences and blocks of paused best-effort requests (preempted by recompute).
        running_seqs = self.num_running_seqs
        most_urgent = min((r.priority for r in self.running), default=None)
        while self.waiting:
            request = self.waiting[0]
            if running_seqs + request.num_seqs_reserved > self.config.max_num_seqs and self.running:
                if not self._preempt_less_urgent(request, out):
                    break
                running_seqs = self.num_running_seqs
                continue
            new_window = request.window.slot is None
            if request.window.encoding or (new_window and not self.encode_in_step):
                break  # its window is (or will be) encoded across steps; admitted once its K/V are written
            if new_window and (self.slots.num_free == 0 or len(out.encode) >= self.encoder_windows_per_step):
                break
            if most_urgent is not None and request.priority > most_urgent:
                break
            if new_window and request.priority > 0 and out.encode:
                break  # best-effort windows are encoded one per step: an urgent arrival waits for one window at most
            needed = sum(blocks_for(seq.num_tokens, self.config.block_size) for seq in request.seqs)
            new_tokens = sum(seq.num_tokens for seq in request.seqs)
            if new_tokens > token_budget:
                break
            if not self.blocks.can_allocate(needed):
                if not self._preempt_less_urgent(request, out):
                    break
                running_seqs = self.num_running_seqs
                continue
            self.waiting.popleft()
            if new_window:
                request.window.slot = self.slots.allocate()
                out.encode.append(request)
            for seq in request.seqs:
                seq.block_table = [self.blocks.allocate() for _ in range(blocks_for(seq.num_tokens,
                                                                                     self.config.block_size))]
                seq.num_computed = 0
            request.status = RequestStatus.RUNNING
            token_budget -= new_tokens
            running_seqs += request.num_seqs_reserved
            self.running.append(request)
            most_urgent = request.priority if most_urgent is None else min(most_urgent, request.priority)
            out.prefill += request.seqs
        self._schedule_alignments(out)
        return out

    def _promote(self, now: float) -> None:
        """Raise deferred requests whose budget ran out to priority 0; a waiting one moves to its arrival order among
        the waiting priority-0 requests (a running one simply stops being paused)."""
        for request in self.promotions.due(now):
            if request not in self.waiting:
                continue
            self.waiting.remove(request)
            index = next((i for i, waiting in enumerate(self.waiting)
                          if waiting.priority > 0 or waiting.arrival_time > request.arrival_time), len(self.waiting))
            self.waiting.insert(index, request)

    def _schedule_alignments(self, out: SchedulerOutput) -> None:
        """Admit waiting alignment passes in arrival order while their tokens fit the batched-token budget (at
        least one). One whose window has no slot yet is encoded in this step, as for a decode, or waits for a
        slot without holding up the others (they take no blocks)."""
        tokens = 0
        for request in list(self.alignments):
            if out.align and tokens + len(request.tokens) > self.config.max_num_batched_tokens:
                break
            new_window = request.window.slot is None
            if request.window.encoding:
                continue
            if new_window and (self.slots.num_free == 0 or len(out.encode) >= self.encoder_windows_per_step):
                continue
            self.alignments.remove(request)
            if new_window:
                request.window.slot = self.slots.allocate()
                out.encode.append(request)
            tokens += len(request.tokens)
            out.align.append(request)

    def finish_alignment(self, request: AlignmentRequest) -> None:
        """Drop an alignment pass that has not run yet (aborted); the engine detaches its window."""
        if request in self.alignments:
            self.alignments.remove(request)

    def _blocks_to_grow(self, seq: Sequence) -> int:
        """Blocks the sequence must take to write its next token: a new block, or a private copy of a shared one."""
        size = self.config.block_size
        needed = blocks_for(seq.num_computed + 1, size) - len(seq.block_table)
        index = seq.num_computed // size
        if index < len(seq.block_table) and self.blocks.ref_count(seq.block_table[index]) > 1:
            needed += 1
        return needed

    def _grow(self, seq: Sequence, out: SchedulerOutput) -> None:
        size = self.config.block_size
        index = seq.num_computed // size
        if index < len(seq.block_table) and self.blocks.ref_count(seq.block_table[index]) > 1:
            shared = seq.block_table[index]
            private = self.blocks.allocate()
            out.block_copies.append((shared, private))
            self.blocks.free(shared)
            seq.block_table[index] = private
        while len(seq.block_table) < blocks_for(seq.num_computed + 1, size):
            seq.block_table.append(self.blocks.allocate())

    def free_blocks(self, seq: Sequence) -> None:
        for block in seq.block_table:
            self.blocks.free(block)
        seq.block_table = []

    def _preempt_less_urgent(self, request: Request, out: SchedulerOutput) -> bool:
        """Make room for a waiting request by preempting the newest request paused this step that is less urgent;
        False when there is none (requests that feed a token this step are never taken)."""
        victims = [r for r in out.paused if r.priority > request.priority]
        if not victims:
            return False
        out.paused.remove(victims[-1])
        self.running.remove(victims[-1])
        self._preempt(victims[-1], out)
        return True

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        """Free the request's blocks and queue it for recompute; its window keeps its cross-K/V slot."""
        for seq in request.seqs:
            self.free_blocks(seq)
            seq.num_computed = 0
        request.status = RequestStatus.WAITING
        # Back to the front of its priority class: ahead of requests of its priority, behind more urgent ones.
        index = next((i for i, waiting in enumerate(self.waiting) if waiting.priority >= request.priority),
                     len(self.waiting))
        self.waiting.insert(index, request)
        out.preempted.append(request)
        self.num_preemptions += 1

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Mark the request finished and return its blocks to the pool (the engine detaches its window)."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        for seq in request.seqs:
            self.free_blocks(seq)
        request.status = status
