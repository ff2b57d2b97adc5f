"""One loaded model behind the server: its engine thread, transcription service, metrics view and stats line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from vllm_whisper.engine.async_engine import AsyncLLMEngine
from vllm_whisper.engine.setup_info import EngineSetup, engine_setup
from vllm_whisper.entrypoints.drain import Drain
from vllm_whisper.entrypoints.metrics import ServerMetrics
from vllm_whisper.entrypoints.model_specs import ModelSpec
from vllm_whisper.entrypoints.openai.serving_transcription import ServingLimits, TranscriptionService
from vllm_whisper.entrypoints.stat_logger import EngineStatLogger
from vllm_whisper.entrypoints.warm_up import warm_up
from vllm_whisper.model_executor.loader import LoadedModel


@dataclass
class ModelRuntime:
    """What a loaded model holds; stop() ends its engine thread so that dropping it frees the memory."""

    spec: ModelSpec
    loaded: LoadedModel
    engine: AsyncLLMEngine
    service: TranscriptionService
    metrics: ServerMetrics
    setup: EngineSetup
    stat_logger: EngineStatLogger | None = None

    @property
    def busy(self) -> bool:
        """Requests, streams or realtime sessions are running on this model."""
        return self.service.in_progress > 0

    def stop(self) -> None:
        if self.stat_logger is not None:
            self.stat_logger.stop()
        self.engine.shutdown()


def build_runtime(spec: ModelSpec, args: argparse.Namespace, metrics: ServerMetrics, drain: Drain,
                  engine_index: int = 0, label: str | None = None) -> ModelRuntime:
    """Load the model, warm it up and start its engine thread (blocking: seconds; run it off the event loop).
    `label` names the model on the periodic stats line (None when the server serves one model)."""
    llm_engine = spec.engine_args.create_engine()
    warm_up(llm_engine)
    engine = AsyncLLMEngine(llm_engine, restart_on_failure=args.restart_engine_on_failure)
    engine.add_stats_listener(metrics.record_iteration)
    stat_logger = None
    if not args.disable_log_stats:
        stat_logger = EngineStatLogger(engine, args.log_stats_interval, engine_index, label).start()
    config = llm_engine.config
    limits = ServingLimits(
        max_audio_bytes=int(args.max_audio_filesize_mb * 2**20),
        max_concurrent_requests=config.max_num_seqs + args.max_waiting_requests,
        max_new_tokens=config.default_max_new_tokens,
        max_audio_seconds=args.max_audio_duration,
        upload_read_timeout=args.upload_read_timeout,
    )
    service = TranscriptionService(engine, list(spec.served_names), limits, metrics, drain)
    return ModelRuntime(spec, llm_engine.loaded, engine, service, metrics, engine_setup(llm_engine), stat_logger)
