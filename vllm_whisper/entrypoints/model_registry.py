"""The served models by name: which are loaded, loading one on its first request (once, however many requests
race for it), unloading idle ones after --model-ttl, and keeping the loaded ones within
--models-memory-budget-gib.

The first model is the default: loaded at start-up and never unloaded, so a request without `model` never waits
for a load. Loads and unloads run in a worker thread, off the event loop; each model's lock orders them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from vllm_whisper.entrypoints.memory_release import release_memory
from vllm_whisper.entrypoints.model_footprint import GIB, Footprint, estimate_footprint
from vllm_whisper.entrypoints.model_runtime import ModelRuntime
from vllm_whisper.entrypoints.model_specs import ModelSpec
from vllm_whisper.entrypoints.openai.errors import OpenAIError

logger = logging.getLogger("vllm_whisper.api_server")
RETRY_AFTER_S = 10


@dataclass
class ModelEntry:
    """One served model: how to load it, its estimated footprint, and its runtime while loaded."""

    spec: ModelSpec
    index: int
    footprint: Footprint
    runtime: ModelRuntime | None = None
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def pinned(self) -> bool:
        """The default model stays loaded."""
        return self.index == 0


class ModelRegistry:
    """Routes a request's `model` to a loaded ModelRuntime (OpenAIError 404 / 503 when it cannot)."""

    def __init__(self, specs: list[ModelSpec], build: Callable[[ModelEntry], ModelRuntime],
                 ttl: float | None = None, budget_gib: float | None = None,
                 estimate: Callable[[ModelSpec], Footprint] = lambda spec: estimate_footprint(spec.engine_args)):
        if not specs:
            raise ValueError("a server needs at least one model")
        self.entries = [ModelEntry(spec, index, estimate(spec)) for index, spec in enumerate(specs)]
        self._by_name = {name: entry for entry in self.entries for name in entry.spec.served_names}
        self.build, self.ttl = build, ttl
        self.budget_bytes = int(budget_gib * GIB) if budget_gib is not None else None
        self._reaper: asyncio.Task | None = None

    # --- lookup -------------------------------------------------------------------------------------
    @property
    def default(self) -> ModelEntry:
        return self.entries[0]

    @property
    def served_names(self) -> list[str]:
        return list(self._by_name)

    @property
    def loaded(self) -> list[ModelRuntime]:
        return [entry.runtime for entry in self.entries if entry.runtime is not None]

    def entry(self, name: str | None) -> ModelEntry:
        """The entry answering to `name` (the default for None or ""); 404 naming the served models if none."""
        if not name:
            return self.default
        found = self._by_name.get(name)
        if found is None:
            raise OpenAIError(404, f"The model {name!r} does not exist; this server serves "
                              f"{', '.join(self.served_names)}.", param="model", code="model_not_found")
        return found

    # --- loading ------------------------------------------------------------------------------------
    def load_at_start(self) -> None:
        """Load the default model, and every other one when there is no TTL and it fits the budget."""
        self._check_fits_alone(self.default)
        self.default.runtime = self.build(self.default)
        for entry in self.entries[1:]:
            if self.ttl is None and self._fits(entry):
                entry.runtime = self.build(entry)

    async def acquire(self, name: str | None) -> ModelRuntime:
        """The loaded runtime for `name`, loading it first (in a thread) if needed; marks it used now."""
        entry = self.entry(name)
        self._start_reaper()
        if entry.runtime is None:
            async with entry.lock:
                if entry.runtime is None:
                    await self._make_room(entry)
                    started = time.perf_counter()
                    entry.runtime = await asyncio.to_thread(self.build, entry)
                    logger.info("model %s loaded in %.2f s", entry.spec.name, time.perf_counter() - started)
        entry.last_used = time.monotonic()
        return entry.runtime

    def _fits(self, entry: ModelEntry) -> bool:
        if self.budget_bytes is None:
            return True
        used = sum(other.footprint.total_bytes for other in self.entries if other.runtime is not None)
        return used + entry.footprint.total_bytes <= self.budget_bytes

    def _check_fits_alone(self, entry: ModelEntry) -> None:
        if self.budget_bytes is not None and entry.footprint.total_bytes > self.budget_bytes:
            raise ValueError(self._does_not_fit_message(entry, alone=True))

    def _does_not_fit_message(self, entry: ModelEntry, alone: bool) -> str:
        footprint = entry.footprint
        what = (f"model {entry.spec.name!r} needs an estimated {footprint.gib:.2f} GiB (weights "
                f"{footprint.weights_bytes / GIB:.2f} GiB + KV cache {footprint.kv_cache_bytes / GIB:.2f} GiB)")
        if alone:
            return (f"The {what}, more than the --models-memory-budget-gib of {self.budget_bytes / GIB:g} GiB; raise "
                    "the budget or lower --kv-cache-space.")
        busy = [e.spec.name for e in self.entries if e.runtime is not None]
        return (f"The {what}, which does not fit the --models-memory-budget-gib of {self.budget_bytes / GIB:g} GiB "
                f"beside the loaded models ({', '.join(busy)}), and none of them can be unloaded now; retry later.")

    async def _make_room(self, entry: ModelEntry) -> None:
        """Unload idle models, least recently used first, until `entry` fits; 503 when it cannot."""
        if self.budget_bytes is None:
            return
        if entry.footprint.total_bytes > self.budget_bytes:
            raise OpenAIError(503, self._does_not_fit_message(entry, alone=True), "server_error",
                              code="model_does_not_fit", retry_after=RETRY_AFTER_S)
        idle = sorted((e for e in self.entries if e.runtime is not None and not e.pinned and not e.runtime.busy),
                      key=lambda e: e.last_used)
        while not self._fits(entry) and idle:
            await self.unload(idle.pop(0), reason="to make room under the memory budget")
        if not self._fits(entry):
            raise OpenAIError(503, self._does_not_fit_message(entry, alone=False), "server_error",
                              code="model_does_not_fit", retry_after=RETRY_AFTER_S)

    # --- unloading ----------------------------------------------------------------------------------
    async def unload(self, entry: ModelEntry, reason: str) -> bool:
        """Stop the model's engine and drop it, then give the memory back; False if it was busy or not loaded."""
        runtime = entry.runtime
        if runtime is None or runtime.busy or entry.pinned:
            return False
        entry.runtime = None  # new requests load it again (after this unload, under the same lock)
        await asyncio.to_thread(runtime.stop)
        del runtime
        await asyncio.to_thread(release_memory)
        logger.info("model %s unloaded %s", entry.spec.name, reason)
        return True

    async def unload_idle(self) -> None:
        """One TTL pass: busy models count as used now; idle ones past the TTL are unloaded."""
        now = time.monotonic()
        for entry in self.entries:
            runtime = entry.runtime
            if runtime is None or entry.pinned or self.ttl is None:
                continue
            if runtime.busy:
                entry.last_used = now
            elif now - entry.last_used >= self.ttl and not entry.lock.locked():
                async with entry.lock:
                    await self.unload(entry, reason=f"after {self.ttl:g} s idle")

    def _start_reaper(self) -> None:
        """The TTL loop, started on the event loop of the first request (the app has no lifespan hook here)."""
        if self.ttl is None or self._reaper is not None:
            return
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        tick = min(1.0, self.ttl / 4)
        while True:
            await asyncio.sleep(tick)
            try:
                await self.unload_idle()
            except Exception:  # an unload that failed must not stop the loop; the model stays as it was
                logger.exception("unloading an idle model failed")

    def shutdown(self) -> None:
        """Stop every loaded engine (the server is exiting)."""
        if self._reaper is not None:
            try:
                self._reaper.cancel()
            except RuntimeError:  # its event loop has already closed, and the task with it
                pass
        for entry in self.entries:
            if entry.runtime is not None:
                entry.runtime.stop()
