"""Each replica's Prometheus metrics into Ray's metrics export, labelled with the replica.

Behind Serve's proxy a scrape of `/metrics` reaches one replica at random, so Prometheus scrapes Ray instead:
every few seconds each sample of the replica's own registry (the single server's `/metrics`) is set on a
`ray.serve.metrics.Gauge`, which Ray exports on each node's metrics port (`ray start --metrics-export-port`) with
Serve's `application`, `deployment` and `replica` labels. Names gain Ray's `ray_` prefix and `:` becomes `_`
(`vllm:num_requests_running` -> `ray_vllm_num_requests_running`). Counters and histogram buckets are exported with
their cumulative values, so `rate()` and `histogram_quantile()` work on them as on the single server's.
"""

from __future__ import annotations

import asyncio
import logging
import re

from prometheus_client import CollectorRegistry
from ray.serve.metrics import Gauge

from vllm_whisper.entrypoints.api_server import ServerState

logger = logging.getLogger(__name__)
EXPORT_INTERVAL_S = 2.0


def ray_metric_name(name: str) -> str:
    """A Prometheus sample name as a valid Ray/OpenTelemetry metric name."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


class RayMetricsExport:
    """Copies a registry's samples onto Ray gauges, one gauge per sample name."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.gauges: dict[str, tuple[Gauge, tuple[str, ...]]] = {}

    def export_once(self) -> int:
        """Set every current sample; returns how many were set."""
        count = 0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):  # creation timestamps of counters: not worth a series
                    continue
                gauge, keys = self._gauge(sample.name, tuple(sorted(sample.labels)), family.documentation)
                if tuple(sorted(sample.labels)) != keys:
                    continue  # labels changed shape after the gauge was declared: skip rather than fail
                gauge.set(float(sample.value), tags={k: str(v) for k, v in sample.labels.items()})
                count += 1
        return count

    def _gauge(self, name: str, keys: tuple[str, ...], description: str) -> tuple[Gauge, tuple[str, ...]]:
        if name not in self.gauges:
            self.gauges[name] = (Gauge(ray_metric_name(name), description=description or name, tag_keys=keys), keys)
        return self.gauges[name]

    async def run(self, state: ServerState, interval: float = EXPORT_INTERVAL_S) -> None:
        """Export until cancelled, refreshing the engine gauges (as a /metrics scrape does) each time."""
        while True:
            try:
                state.metrics.update_engine(state.engine.stats)
                self.export_once()
            except Exception:  # noqa: BLE001 - metrics must never take the replica down
                logger.exception("exporting metrics to Ray failed")
            await asyncio.sleep(interval)
