"""The engine for asyncio callers (the server): a background thread runs the step loop, each request gets
its own async stream of outputs, and a stream that is closed early (client gone, task cancelled) aborts its
request so its blocks and slot return to the pools at once.

The engine itself is touched only by its thread; callers send commands through a queue, so adds and aborts
land between steps and never race with one.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from torch import Tensor

from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.alignment import AlignmentParams
from vllm_whisper.engine.iteration_stats import IterationStats
from vllm_whisper.engine.llm_engine import EngineStats, LLMEngine
from vllm_whisper.engine.request import RequestOutput
from vllm_whisper.engine.sampler import SamplingParams
from vllm_whisper.model_executor.loader import LoadedModel
from vllm_whisper.tokenizer import WhisperTokenizer

logger = logging.getLogger(__name__)
StatsListener = Callable[[EngineStats, IterationStats], None]


class EngineDeadError(RuntimeError):
    """The engine thread stopped after an internal error; no further requests can run."""


class EngineRequestError(RuntimeError):
    """The engine failed this one request (a fault in its model pass); the engine and other requests go on."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def put(self, item: RequestOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncLLMEngine:
    """restart_on_failure: when the engine thread hits an error outside any one request, fail the requests in
    flight, build a fresh LLMEngine on the same loaded model and carry on (else the engine stays dead: /health
    turns 503 and a supervisor should restart the process)."""

    def __init__(self, engine: LLMEngine, restart_on_failure: bool = False):
        self.engine = engine
        self.restart_on_failure = restart_on_failure
        self.restarts = 0
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._streams: dict[str, _Stream] = {}
        self._wake = threading.Event()
        self._stopped = False
        self._error: BaseException | None = None
        self._stats = engine.stats
        self._stats_listeners: list[StatsListener] = []
        self._thread = threading.Thread(target=self._run, name="vllm-whisper-engine", daemon=True)
        self._thread.start()

    # --- public API -------------------------------------------------------------------------------
    def generate(self, request_id: str, features: Tensor, prompt: list[int], params: SamplingParams,
                       audio_seconds: float = 30.0, window_key: str | None = None,
                       retain_window: bool = False, priority: int = 0,
                       urgent_after: float | None = None,
                       full_audio_context: bool = False) -> AsyncIterator[RequestOutput]:
        """Yield this request's outputs as steps produce them; the last one has finished=True. A lower priority
        value is admitted first (realtime turns use 1, their partial passes 2); with urgent_after, a deferred request
        counts as priority 0 after that many seconds (see LLMEngine.add_request)."""
        def add() -> None:
            self.engine.add_request(request_id, features, prompt, params, audio_seconds, window_key, retain_window,
                                    priority, urgent_after, full_audio_context)

        return self._outputs(request_id, add)

    def align(self, request_id: str, features: Tensor, prompt: list[int], params: AlignmentParams,
                    window_key: str | None = None, retain_window: bool = False) -> AsyncIterator[RequestOutput]:
        """Yield the one (finished) output of a word-alignment pass; see LLMEngine.add_alignment_request."""
        def add() -> None:
            self.engine.add_alignment_request(request_id, features, prompt, params, window_key, retain_window)

        return self._outputs(request_id, add)

    async def _outputs(self, request_id: str, add: Callable[[], None]) -> AsyncIterator[RequestOutput]:
        """Send `add` to the engine thread (on the first iteration) and yield the request's outputs until it
        finishes; closing the generator early aborts the request."""
        if self._error is not None:
            raise EngineDeadError(f"the engine stopped: {self._error}")
        stream = _Stream(asyncio.get_running_loop())
        self._streams[request_id] = stream

        def add_or_fail() -> None:
            try:
                add()
            except Exception as exc:  # validation errors belong to this caller only
                self._streams.pop(request_id, None)
                stream.put(exc)

        self._send(add_or_fail)
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.error is not None:
                    finished = True
                    raise EngineRequestError(f"the engine failed request {request_id}: {item.error}")
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Stop a request; safe to call for finished or unknown ids."""
        def abort() -> None:
            self._streams.pop(request_id, None)
            self.engine.abort_request(request_id)

        self._send(abort)

    def release_window(self, window_key: str) -> None:
        self._send(lambda: self.engine.release_window(window_key))

    @property
    def loaded(self) -> LoadedModel:
        """The model the engine runs (config, tokenizer, generation defaults); read-only for callers."""
        return self.engine.loaded

    @property
    def tokenizer(self) -> WhisperTokenizer:
        return self.engine.loaded.tokenizer

    @property
    def config(self) -> EngineConfig:
        """The engine's configuration (max_model_len, token budgets); read-only for callers."""
        return self.engine.config

    @property
    def stats(self) -> EngineStats:
        """The engine's counters as of its last step (read without stopping the loop)."""
        return self._stats

    def add_stats_listener(self, listener: StatsListener) -> None:
        """Call `listener(stats, iteration)` on the engine thread after every step, before the step's outputs reach
        their streams (so a client that has its result also finds it in the metrics). It must be quick and
        thread-safe; one that raises is logged and dropped, never stopping the engine."""
        self._stats_listeners.append(listener)
        self._send(self._take_iteration_stats)  # start recording before the next step (drops nothing measured)

    def _take_iteration_stats(self) -> None:
        self.engine.take_iteration_stats()

    async def wait_idle(self) -> EngineStats:
        """Wait until all commands sent so far have been applied; return fresh stats."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._send(lambda: loop.call_soon_threadsafe(done.set_result, self.engine.stats))
        return await done

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=30)

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self._error is None

    # --- engine thread ------------------------------------------------------------------------------
    def _send(self, command: Callable[[], None]) -> None:
        if self._error is not None:
            raise EngineDeadError(f"the engine stopped: {self._error}")
        self._commands.put(command)
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            try:
                self._loop()
            except BaseException as exc:  # an engine bug outside any one request
                logger.exception("the engine thread failed")
                for stream in list(self._streams.values()):
                    stream.put(EngineDeadError(f"the engine stopped: {exc}"))
                self._streams.clear()
                if not self.restart_on_failure or isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    self._error = exc
                    logger.critical("the engine is dead; new requests get 503 until the server is restarted "
                                    "(or start it with --restart-engine-on-failure)")
                    return
                try:
                    self._restart()
                except BaseException as failed:
                    logger.exception("the engine could not be restarted")
                    self._error = failed
                    return

    def _restart(self) -> None:
        """Replace the failed engine with a fresh one on the same model (pools and caches rebuilt)."""
        loaded, config = self.engine.loaded, self.engine.config
        self.engine = None  # type: ignore[assignment]  # free the old caches before allocating new ones
        self.engine = LLMEngine(loaded, config)
        self.restarts += 1
        self._stats = self.engine.stats
        if self._stats_listeners:
            self._take_iteration_stats()  # the listeners see the new engine's first step too
        logger.warning("engine restarted (%d restart(s) so far)", self.restarts)

    def _loop(self) -> None:
        """Apply commands, step while there is work, hand each output to its stream."""
        while not self._stopped:
            self._drain_commands()
            if not self.engine.has_unfinished_requests():
                self._stats = self.engine.stats
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            outputs = self.engine.step()
            self._stats = self.engine.stats
            self._publish_stats()
            for output in outputs:
                stream = self._streams.get(output.request_id)
                if stream is not None:
                    stream.put(output)
                    if output.finished:
                        self._streams.pop(output.request_id, None)
            if not outputs and self.engine.is_stalled:
                # Waiting for a caller to release a retained window: sleep until a command arrives.
                self._wake.wait(timeout=0.5)
                self._wake.clear()

    def _publish_stats(self) -> None:
        if not self._stats_listeners:
            return
        iteration = self.engine.take_iteration_stats()
        for listener in list(self._stats_listeners):
            try:
                listener(self._stats, iteration)
            except Exception:  # a broken metrics consumer must not stop the engine
                logger.exception("a stats listener failed; it gets no further engine stats")
                self._stats_listeners.remove(listener)

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            command()
