"""Prometheus metrics under vLLM's names where the concept is the same, so existing dashboards and routers
work, plus what only a speech server has (audio seconds, real-time factor)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from vllm_whisper.engine.llm_engine import EngineStats

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0)
RTF_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


@dataclass
class ServerMetrics:
    """One registry per server (tests run several in one process)."""

    registry: CollectorRegistry
    running: Gauge
    waiting: Gauge
    kv_usage: Gauge
    cross_usage: Gauge
    requests_in_progress: Gauge
    audio_seconds: Counter
    generation_tokens: Counter
    alignment_passes: Counter
    finished: Counter
    time_to_first_token: Histogram
    e2e_latency: Histogram
    real_time_factor: Histogram

    @classmethod
    def create(cls, model_name: str) -> "ServerMetrics":
        registry = CollectorRegistry()
        labels = ["model_name"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        metrics = cls(
            registry=registry,
            running=gauge("vllm:num_requests_running", "Window decodes running in the engine."),
            waiting=gauge("vllm:num_requests_waiting", "Window decodes waiting for cache space."),
            kv_usage=gauge("vllm:gpu_cache_usage_perc", "Fraction of decoder KV blocks in use (1 = 100%)."),
            cross_usage=gauge("vllm:cross_cache_usage_perc", "Fraction of cross-attention K/V slots in use."),
            requests_in_progress=gauge("vllm_whisper:http_requests_in_progress",
                                       "Transcription requests accepted and not yet answered."),
            audio_seconds=Counter("vllm_whisper:audio_seconds_processed", "Seconds of audio transcribed.",
                                  labels, registry=registry),
            generation_tokens=Counter("vllm:generation_tokens", "Tokens decoded.", labels, registry=registry),
            alignment_passes=Counter("vllm_whisper:alignment_passes", "Windows aligned for word timestamps.",
                                     labels, registry=registry),
            finished=Counter("vllm:request_success", "Requests answered, by outcome.",
                             labels + ["finished_reason"], registry=registry),
            time_to_first_token=Histogram("vllm:time_to_first_token_seconds",
                                          "From request arrival to the first decoded text.", labels,
                                          buckets=LATENCY_BUCKETS, registry=registry),
            e2e_latency=Histogram("vllm:e2e_request_latency_seconds", "From request arrival to the last byte.",
                                  labels, buckets=LATENCY_BUCKETS, registry=registry),
            real_time_factor=Histogram("vllm_whisper:request_real_time_factor",
                                       "Audio seconds per wall-clock second, per request.", labels,
                                       buckets=RTF_BUCKETS, registry=registry),
        )
        metrics.model_name = model_name
        metrics.alignment_passes_seen = 0
        return metrics

    def update_engine(self, stats: EngineStats) -> None:
        name = self.model_name
        self.running.labels(name).set(stats.num_running)
        self.waiting.labels(name).set(stats.num_waiting)
        self.kv_usage.labels(name).set(stats.kv_usage)
        self.cross_usage.labels(name).set(stats.cross_slot_usage)
        # The engine counts; the exported counter follows it by the increase since the last scrape.
        self.alignment_passes.labels(name).inc(max(0, stats.alignment_passes - self.alignment_passes_seen))
        self.alignment_passes_seen = max(self.alignment_passes_seen, stats.alignment_passes)

    def observe_request(self, audio_seconds: float, tokens: int, ttft: float | None, latency: float,
                        reason: str) -> None:
        name = self.model_name
        self.audio_seconds.labels(name).inc(audio_seconds)
        self.generation_tokens.labels(name).inc(tokens)
        self.finished.labels(name, reason).inc()
        if ttft is not None:
            self.time_to_first_token.labels(name).observe(ttft)
        self.e2e_latency.labels(name).observe(latency)
        if latency > 0 and audio_seconds > 0:
            self.real_time_factor.labels(name).observe(audio_seconds / latency)

    def render(self) -> bytes:
        return generate_latest(self.registry)
