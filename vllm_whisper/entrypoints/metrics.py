"""Prometheus metrics under vLLM's names, labels (`model_name`, `engine`) and buckets where the concept is the same,
so existing dashboards and routers work, plus what only a speech server has (`vllm_whisper:*`: audio seconds,
real-time factor, alignment passes, HTTP responses by route).

An engine "request" in vLLM's metrics is one 30 s window decode here (a long file is several); the request-level
histograms of the HTTP API (time to first text, end-to-end latency) are per upload."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from vllm_whisper.engine.iteration_stats import IterationStats
from vllm_whisper.engine.llm_engine import EngineStats

# vLLM's buckets (vllm/v1/metrics/loggers.py), so quantiles line up with a vLLM dashboard's.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
INTER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                       40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                           240.0, 480.0, 960.0, 1920.0, 7680.0)
RTF_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
ENGINE_INDEX = "0"  # one engine per server process (vLLM's `engine` label)


@dataclass
class ServerMetrics:
    """One registry per server (tests run several in one process). `vllm:*` metrics carry vLLM's labels
    (model_name, engine); `vllm_whisper:*` ones carry model_name only."""

    registry: CollectorRegistry
    model_name: str
    running: Gauge
    waiting: Gauge
    kv_usage: Gauge  # vllm:kv_cache_usage_perc
    gpu_cache_usage: Gauge  # vllm:gpu_cache_usage_perc, vLLM's older name for the same value
    cross_usage: Gauge
    requests_in_progress: Gauge
    audio_seconds: Counter
    prompt_tokens: Counter
    generation_tokens: Counter
    preemptions: Counter
    alignment_passes: Counter
    finished: Counter
    http_responses: Counter
    time_to_first_token: Histogram
    e2e_latency: Histogram
    queue_time: Histogram
    inter_token_latency: Histogram
    real_time_factor: Histogram
    alignment_passes_seen: int = 0

    @classmethod
    def create(cls, model_name: str) -> "ServerMetrics":
        registry = CollectorRegistry()
        vllm_labels = ["model_name", "engine"]
        own_labels = ["model_name"]

        def gauge(name: str, doc: str, labels: list[str] = vllm_labels) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        def counter(name: str, doc: str, labels: list[str] = vllm_labels) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...], labels: list[str] = vllm_labels) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry)

        return cls(
            registry=registry,
            model_name=model_name,
            running=gauge("vllm:num_requests_running", "Window decodes in the engine's running batch."),
            waiting=gauge("vllm:num_requests_waiting", "Window decodes waiting for admission."),
            kv_usage=gauge("vllm:kv_cache_usage_perc", "Decoder KV-cache usage (self-attention blocks). 1 means 100 "
                           "percent usage."),
            gpu_cache_usage=gauge("vllm:gpu_cache_usage_perc", "Same as vllm:kv_cache_usage_perc (vLLM's older "
                                  "name; also on the CPU)."),
            cross_usage=gauge("vllm:cross_cache_usage_perc", "Fraction of cross-attention K/V slots in use."),
            requests_in_progress=gauge("vllm_whisper:http_requests_in_progress",
                                       "Transcription requests accepted and not yet answered.", own_labels),
            audio_seconds=counter("vllm_whisper:audio_seconds_processed", "Seconds of audio transcribed.",
                                  own_labels),
            prompt_tokens=counter("vllm:prompt_tokens", "Decoder prompt tokens prefilled (each window once)."),
            generation_tokens=counter("vllm:generation_tokens", "Tokens decoded by the engine."),
            preemptions=counter("vllm:num_preemptions", "Cumulative number of preemptions (by recompute) from the "
                                "engine."),
            alignment_passes=counter("vllm_whisper:alignment_passes", "Windows aligned for word timestamps.",
                                     own_labels),
            finished=Counter("vllm:request_success", "Requests answered, by outcome.",
                             vllm_labels + ["finished_reason"], registry=registry),
            http_responses=Counter("vllm_whisper:http_responses", "HTTP responses by route template and status code "
                                   "(WebSockets: 101 when accepted, else the status of the refusal).",
                                   ["route", "status"], registry=registry),
            time_to_first_token=histogram("vllm:time_to_first_token_seconds",
                                          "From request arrival to the first decoded text.", TTFT_BUCKETS),
            e2e_latency=histogram("vllm:e2e_request_latency_seconds", "From request arrival to the last byte.",
                                  REQUEST_LATENCY_BUCKETS),
            queue_time=histogram("vllm:request_queue_time_seconds", "Time a window waited in the engine before "
                                 "its first admission.", REQUEST_LATENCY_BUCKETS),
            inter_token_latency=histogram("vllm:inter_token_latency_seconds", "Time between a window's successive "
                                          "decoded tokens.", INTER_TOKEN_BUCKETS),
            real_time_factor=histogram("vllm_whisper:request_real_time_factor",
                                       "Audio seconds per wall-clock second, per request.", RTF_BUCKETS, own_labels),
        )

    def for_model(self, model_name: str) -> "ServerMetrics":
        """The same collectors (one registry, one /metrics page) recording under another model's `model_name`
        label, for a server with several models."""
        return dataclasses.replace(self, model_name=model_name, alignment_passes_seen=0)

    @property
    def _engine_labels(self) -> tuple[str, str]:
        return self.model_name, ENGINE_INDEX

    def update_engine(self, stats: EngineStats) -> None:
        """Set the gauges from the engine's latest stats (at scrape time)."""
        labels = self._engine_labels
        self.running.labels(*labels).set(stats.num_running)
        self.waiting.labels(*labels).set(stats.num_waiting)
        self.kv_usage.labels(*labels).set(stats.kv_usage)
        self.gpu_cache_usage.labels(*labels).set(stats.kv_usage)
        self.cross_usage.labels(*labels).set(stats.cross_slot_usage)
        # The engine counts; the exported counter follows it by the increase since the last scrape.
        self.alignment_passes.labels(self.model_name).inc(max(0, stats.alignment_passes - self.alignment_passes_seen))
        self.alignment_passes_seen = max(self.alignment_passes_seen, stats.alignment_passes)

    def record_iteration(self, stats: EngineStats, iteration: IterationStats) -> None:
        """The engine thread's per-step listener (AsyncLLMEngine.add_stats_listener): counters and histograms."""
        labels = self._engine_labels
        self.prompt_tokens.labels(*labels).inc(iteration.prompt_tokens)
        self.generation_tokens.labels(*labels).inc(iteration.generation_tokens)
        self.preemptions.labels(*labels).inc(iteration.preemptions)
        if iteration.queue_times:
            queue_time = self.queue_time.labels(*labels)
            for seconds in iteration.queue_times:
                queue_time.observe(seconds)
        if iteration.inter_token_latencies:
            inter_token = self.inter_token_latency.labels(*labels)
            for seconds in iteration.inter_token_latencies:
                inter_token.observe(seconds)

    def observe_request(self, audio_seconds: float, ttft: float | None, latency: float, reason: str) -> None:
        """One HTTP transcription ended (the token counters follow the engine's steps, record_iteration)."""
        labels = self._engine_labels
        self.audio_seconds.labels(self.model_name).inc(audio_seconds)
        self.finished.labels(*labels, reason).inc()
        if ttft is not None:
            self.time_to_first_token.labels(*labels).observe(ttft)
        self.e2e_latency.labels(*labels).observe(latency)
        if latency > 0 and audio_seconds > 0:
            self.real_time_factor.labels(self.model_name).observe(audio_seconds / latency)

    def render(self) -> bytes:
        return generate_latest(self.registry)
