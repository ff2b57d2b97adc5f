"""Which requests run this step: keep decoding the running ones, preempt by recompute when blocks run out,
and admit waiting windows first-come-first-served while sequences, slots, blocks and budgets allow."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.kv_cache import BlockPool, SlotPool
from vllm_whisper.engine.request import Request, RequestStatus


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


@dataclass
class SchedulerOutput:
    encode: list[Request] = field(default_factory=list)  # new windows: run the encoder, fill their slots
    prefill: list[Request] = field(default_factory=list)  # feed the whole uncached context
    decode: list[Request] = field(default_factory=list)  # feed one token
    preempted: list[Request] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.prefill or self.decode)


class Scheduler:
    def __init__(self, config: EngineConfig, blocks: BlockPool, slots: SlotPool, encoder_windows_per_step: int):
        self.config = config
        self.encoder_windows_per_step = encoder_windows_per_step
        self.blocks = blocks
        self.slots = slots
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        block_size = self.config.block_size
        token_budget = self.config.max_num_batched_tokens
        # 1. Running sequences each feed one token; make room for it, preempting the newest if needed.
        still_running: list[Request] = []
        queue = deque(self.running)
        while queue:
            request = queue.popleft()
            needed = blocks_for(request.num_computed + 1, block_size) - len(request.block_table)
            while needed > 0 and not self.blocks.can_allocate(needed):
                victim = queue.pop() if queue else request
                self._preempt(victim, out)
                if victim is request:
                    break
            if request.status is not RequestStatus.RUNNING:
                continue
            for _ in range(needed):
                request.block_table.append(self.blocks.allocate())
            still_running.append(request)
            out.decode.append(request)
            token_budget -= 1
        self.running = still_running
        # 2. Admit waiting requests in arrival order (preempted ones were put back at the front).
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            new_window = request.window.slot is None
            if new_window and (self.slots.num_free == 0 or
                               len(out.encode) >= self.encoder_windows_per_step):
                break
            needed = blocks_for(request.num_tokens, block_size)
            if not self.blocks.can_allocate(needed) or request.num_tokens > token_budget:
                break
            self.waiting.popleft()
            if new_window:
                request.window.slot = self.slots.allocate()
                out.encode.append(request)
            request.block_table = [self.blocks.allocate() for _ in range(needed)]
            request.num_computed = 0
            request.status = RequestStatus.RUNNING
            token_budget -= request.num_tokens
            self.running.append(request)
            out.prefill.append(request)
        return out

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        """Free the request's blocks and queue it for recompute; its window keeps its cross-K/V slot."""
        for block in request.block_table:
            self.blocks.free(block)
        request.block_table = []
        request.num_computed = 0
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        out.preempted.append(request)
        self.num_preemptions += 1

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Mark the request finished and return its blocks to the pool (the engine detaches its window)."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        for block in request.block_table:
            self.blocks.free(block)
        request.block_table = []
        request.status = status
