"""vLLM's periodic engine line on the `vllm_whisper.stats` logger, every `--log-stats-interval` seconds while the
engine has work (`--disable-log-stats` turns it off, as in vLLM):

    Engine 000: Avg prompt throughput: 12.0 tokens/s, Avg generation throughput: 151.3 tokens/s, Avg audio
    throughput: 41.7 s/s, Running: 3 reqs, Waiting: 0 reqs, KV cache usage: 2.1%, Cross-attention slot usage: 9.4%,
    Preemptions: 0

Throughputs are averages over the interval; running and waiting count window decodes, as the metrics do. Idle
intervals log nothing (after one line showing the drop to zero). It runs on its own thread, reading the engine's
stats snapshot, so it needs no event loop and never waits on the engine.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from vllm_whisper.engine.async_engine import AsyncLLMEngine
from vllm_whisper.engine.llm_engine import EngineStats

STATS_LOGGER = logging.getLogger("vllm_whisper.stats")


@dataclass
class IntervalStats:
    """Engine activity between two log lines."""

    seconds: float
    prompt_tokens: int
    generation_tokens: int
    audio_seconds: float
    preemptions: int
    now: EngineStats

    @classmethod
    def between(cls, before: EngineStats, now: EngineStats, seconds: float) -> "IntervalStats":
        """Differences of the running totals (never negative: a restarted engine starts its totals at zero)."""
        return cls(seconds, max(0, now.prompt_tokens - before.prompt_tokens),
                   max(0, now.generated_tokens - before.generated_tokens),
                   max(0.0, now.audio_seconds_processed - before.audio_seconds_processed),
                   max(0, now.preemptions - before.preemptions), now)

    @property
    def has_throughput(self) -> bool:
        return bool(self.prompt_tokens or self.generation_tokens or self.audio_seconds)

    @property
    def is_active(self) -> bool:
        return self.has_throughput or bool(self.now.num_running or self.now.num_waiting)

    def line(self, engine_index: int = 0, model: str | None = None) -> str:
        rate = 1.0 / self.seconds if self.seconds > 0 else 0.0
        now = self.now
        name = f" ({model})" if model else ""
        return (f"Engine {engine_index:03d}{name}: Avg prompt throughput: {self.prompt_tokens * rate:.1f} tokens/s, "
                f"Avg generation throughput: {self.generation_tokens * rate:.1f} tokens/s, "
                f"Avg audio throughput: {self.audio_seconds * rate:.1f} s/s, "
                f"Running: {now.num_running} reqs, Waiting: {now.num_waiting} reqs, "
                f"KV cache usage: {now.kv_usage * 100:.1f}%, "
                f"Cross-attention slot usage: {now.cross_slot_usage * 100:.1f}%, "
                f"Preemptions: {self.preemptions}")


class EngineStatLogger:
    """Logs IntervalStats.line every `interval` seconds while the engine is active; stops with the engine."""

    def __init__(self, engine: AsyncLLMEngine, interval: float, engine_index: int = 0, model: str | None = None):
        if interval <= 0:
            raise ValueError(f"--log-stats-interval must be a positive number of seconds, got {interval}")
        self.engine = engine
        self.interval = interval
        self.engine_index, self.model = engine_index, model  # the model is named when a server serves several
        self._stop = threading.Event()
        self._last = engine.stats
        self._last_at = time.monotonic()
        self._last_had_throughput = False
        self._thread = threading.Thread(target=self._run, name="vllm-whisper-stats", daemon=True)

    def start(self) -> "EngineStatLogger":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def log(self) -> IntervalStats:
        """Log the interval since the last call if the engine was active in it (or in the one before)."""
        now, at = self.engine.stats, time.monotonic()
        interval = IntervalStats.between(self._last, now, at - self._last_at)
        if interval.is_active or self._last_had_throughput:
            STATS_LOGGER.info("%s", interval.line(self.engine_index, self.model))
        self._last, self._last_at, self._last_had_throughput = now, at, interval.has_throughput
        return interval

    def _run(self) -> None:
        while not self._stop.wait(self.interval) and self.engine.is_running:
            self.log()
