"""Serve's proxy overhead and a capacity model for N replicas, from the rows of one benchmark_serving.py run that
loaded the single server and Ray Serve with one replica (`--targets vllm-whisper,serve-1,...`).

    python benchmarks/serve_capacity.py serving.json --capacity-replicas 1,2,4,8

Overhead: the latency the proxy adds to one request on an idle server (sequential probes, serve-1 minus the single
server), the throughput lost under load (1 - serve-1 req/s / single req/s), and the proxy's own CPU seconds per
request. Model: N replicas, each on its own accelerator, give N x the single engine's req/s x (1 - that loss),
capped by what one proxy can forward (1 / its CPU seconds per request, per proxy core).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

SINGLE = "vllm-whisper"
SERVE_ONE = "serve-1"


@dataclass(frozen=True)
class ProxyOverhead:
    """What Serve's proxy costs, serve-1 against the single server in the same run."""

    single_requests_per_s: float
    serve_requests_per_s: float
    throughput_loss: float  # fraction of the single server's req/s lost behind the proxy (negative: noise)
    added_latency_s: float | None  # idle-server p50 latency added per request
    proxy_cpu_s_per_request: float | None


@dataclass(frozen=True)
class CapacityRow:
    """The model's figure for N replicas, what bounds it, and the measured req/s when serve-N ran."""

    replicas: int
    engine_bound: float
    proxy_cap: float | None
    requests_per_s: float
    bound_by: str
    measured: float | None


def _row(rows: list[dict], system: str) -> dict:
    for row in rows:
        if row["system"] == system:
            return row
    names = ", ".join(r["system"] for r in rows)
    raise ValueError(f"no {system!r} row in this run ({names}): run with --targets {SINGLE},{SERVE_ONE}")


def proxy_overhead(rows: list[dict]) -> ProxyOverhead:
    """The proxy's cost from the single-server and serve-1 rows of one run."""
    single, serve = _row(rows, SINGLE), _row(rows, SERVE_ONE)
    if single["requests_per_s"] <= 0:
        raise ValueError("the single server answered no request: no baseline to compare Serve with")
    added = None
    if single.get("idle_e2e_p50_s") is not None and serve.get("idle_e2e_p50_s") is not None:
        added = serve["idle_e2e_p50_s"] - single["idle_e2e_p50_s"]
    return ProxyOverhead(single_requests_per_s=single["requests_per_s"], serve_requests_per_s=serve["requests_per_s"],
                         throughput_loss=1.0 - serve["requests_per_s"] / single["requests_per_s"],
                         added_latency_s=added, proxy_cpu_s_per_request=serve.get("proxy_cpu_s_per_request"))


def capacity_model(overhead: ProxyOverhead, replicas: list[int], rows: list[dict] | None = None) -> list[CapacityRow]:
    """N x single req/s x (1 - loss), the loss floored at 0 (a gain behind the proxy is noise), capped by the proxy."""
    measured = {r["system"]: r["requests_per_s"] for r in rows or []}
    cpu = overhead.proxy_cpu_s_per_request
    cap = 1.0 / cpu if cpu else None
    table = []
    for n in replicas:
        if n < 1:
            raise ValueError(f"--capacity-replicas needs counts >= 1, got {n}")
        bound = n * overhead.single_requests_per_s * (1.0 - max(0.0, overhead.throughput_loss))
        proxy_bound = cap is not None and cap < bound
        table.append(CapacityRow(n, bound, cap, cap if proxy_bound else bound, "proxy" if proxy_bound else "engines",
                                 measured.get(f"serve-{n}")))
    return table


def print_capacity(overhead: ProxyOverhead, table: list[CapacityRow]) -> None:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print("\nRay Serve proxy overhead (serve-1 against the single server, same run)")
    print(f"  req/s: single {overhead.single_requests_per_s:.2f}, serve-1 {overhead.serve_requests_per_s:.2f}, "
          f"throughput lost {overhead.throughput_loss * 100:.1f} %")
    print(f"  latency added per request on an idle server (p50): "
          f"{fmt(None if overhead.added_latency_s is None else overhead.added_latency_s * 1000, '.1f')} ms")
    print(f"  proxy CPU per request: "
          f"{fmt(None if overhead.proxy_cpu_s_per_request is None else overhead.proxy_cpu_s_per_request * 1000, '.1f')}"
          f" ms (one proxy core forwards at most "
          f"{fmt(1 / overhead.proxy_cpu_s_per_request if overhead.proxy_cpu_s_per_request else None, '.0f')} req/s)")
    if overhead.throughput_loss < 0 or (overhead.added_latency_s or 0) < 0:
        print("  (a negative cost is this run's noise, e.g. other load on the machine: the model takes the loss as 0)")
    print("Capacity model: N replicas x single-engine req/s x (1 - loss), capped by the proxy")
    print(f"{'replicas':>8} {'engines':>9} {'proxy cap':>9} {'req/s':>9} {'bound by':>9} {'measured':>9}")
    for row in table:
        print(f"{row.replicas:>8} {row.engine_bound:>9.2f} {fmt(row.proxy_cap, '9.1f'):>9} {row.requests_per_s:>9.2f} "
              f"{row.bound_by:>9} {fmt(row.measured, '9.2f'):>9}")


def parse_replicas(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"--capacity-replicas takes comma-separated counts like 1,2,4,8, got {text!r}") from exc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="a benchmark_serving.py --json file with vllm-whisper and serve-1 rows")
    parser.add_argument("--capacity-replicas", default="1,2,4,8")
    args = parser.parse_args()
    rows = json.loads(args.json.read_text())["results"]
    overhead = proxy_overhead(rows)
    print_capacity(overhead, capacity_model(overhead, parse_replicas(args.capacity_replicas), rows))


if __name__ == "__main__":
    main()
