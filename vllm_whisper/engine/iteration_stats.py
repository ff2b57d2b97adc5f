"""What the engine's steps measured since a metrics consumer last asked (vLLM's IterationStats in our terms): the
counts of the interval and the per-window timings that Prometheus histograms need. Running totals live in
EngineStats; these lists exist only while a consumer collects them (LLMEngine.take_iteration_stats)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IterationStats:
    """One collection interval of engine steps."""

    prompt_tokens: int = 0  # decoder prompt tokens of windows admitted for the first time (not recomputes)
    generation_tokens: int = 0  # tokens sampled (every beam counts)
    preemptions: int = 0  # windows preempted by recompute
    queue_times: list[float] = field(default_factory=list)  # per window: seconds from add_request to admission
    inter_token_latencies: list[float] = field(default_factory=list)  # per window and step: seconds since its last
