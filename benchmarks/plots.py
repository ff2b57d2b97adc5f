"""PNG plots from the benchmarks' JSON outputs (matplotlib, Agg backend, no display needed).

  rtfx_vs_concurrency.png   RTFx per system against options.concurrency (closed-loop benchmark_serving.py runs)
  rtfx_vs_request_rate.png  RTFx per system against options.request_rate (open-loop benchmark_serving.py runs)
  rtfx_vs_batch_size.png    RTFx per system against clips decoded together (benchmark_throughput.py and
                            benchmark_offline.py runs: "one at a time" / "sequential" = 1, "all at once" = all clips)
  latency_cdf.png           end-to-end latency CDF per system, one panel per load level, from each row's
                            `latencies_s`; rows without it get their p50/p90/p99 drawn as a step plot
  ttft_cdf.png              the same for time to first token (`ttfts_s`, else p50/p99), streaming runs only

    python benchmarks/plots.py --serving c8.json c64.json --out-dir plots/
    python benchmarks/plots.py --throughput throughput.json --serving serving.json --out-dir plots/
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

LATENCY_PERCENTILES = {"e2e_p50_s": 0.50, "e2e_p90_s": 0.90, "e2e_p99_s": 0.99}
TTFT_PERCENTILES = {"ttft_p50_s": 0.50, "ttft_p99_s": 0.99}


class PlotInputError(ValueError):
    """A JSON file is missing or not in the shape the benchmark scripts write."""


@dataclass
class ServingRow:
    """One system under one load: a row of a benchmark_serving.py JSON with its run's options."""

    system: str
    load: str  # "concurrency 8" or "rate 4/s"
    concurrency: int | None  # set for closed-loop runs
    request_rate: float | None  # set for open-loop runs
    rtfx: float
    latencies: list[float] | None  # per-request seconds, when the file has them
    ttfts: list[float] | None
    latency_percentiles: dict[float, float] = field(default_factory=dict)  # quantile -> seconds
    ttft_percentiles: dict[float, float] = field(default_factory=dict)


@dataclass
class ThroughputRow:
    """One system at one batch size (clips decoded together) from a throughput or offline JSON."""

    system: str
    batch_size: int
    rtfx: float


@dataclass
class Curve:
    """A CDF to draw: exact from samples, or a step through known percentiles."""

    system: str
    label: str
    xs: list[float]
    ys: list[float]
    exact: bool


# --- loading ------------------------------------------------------------------------------------------
def read_results(path: Path) -> dict:
    """The JSON document at `path`, checked to have a `results` list of rows with `system` and `rtfx`."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PlotInputError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise PlotInputError(f"{path}: not JSON ({exc})") from None
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise PlotInputError(f"{path}: expected an object with a non-empty 'results' list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "system" not in row or "rtfx" not in row:
            raise PlotInputError(f"{path}: results[{i}] lacks 'system' or 'rtfx'")
    return data


def percentiles(row: dict, keys: dict[str, float]) -> dict[float, float]:
    return {q: float(row[k]) for k, q in keys.items() if row.get(k) is not None}


def samples(row: dict, key: str) -> list[float] | None:
    values = row.get(key)
    return [float(v) for v in values] if isinstance(values, list) and values else None


def load_serving(path: Path) -> list[ServingRow]:
    """Rows of one benchmark_serving.py --json file."""
    data = read_results(path)
    options = data.get("options") or {}
    rate = options.get("request_rate")
    concurrency = None if rate else options.get("concurrency")
    if rate is None and concurrency is None:
        raise PlotInputError(f"{path}: 'options' has neither 'concurrency' nor 'request_rate' "
                             "(is this a benchmark_serving.py JSON?)")
    load = f"rate {float(rate):g}/s" if rate else f"concurrency {int(concurrency)}"
    return [ServingRow(row["system"], load, None if rate else int(concurrency), float(rate) if rate else None,
                       float(row["rtfx"]), samples(row, "latencies_s"), samples(row, "ttfts_s"),
                       percentiles(row, LATENCY_PERCENTILES), percentiles(row, TTFT_PERCENTILES))
            for row in data["results"]]


def batch_size_of(system: str, clips: int | None) -> tuple[str, int]:
    """The system's name without its batching words, and how many clips it decoded together."""
    batch = re.search(r"\(batch (\d+)\)", system)
    if batch:
        return re.sub(r"\s*\(batch \d+\)", "", system).strip(), int(batch.group(1))
    if "all at once" in system:
        if not clips:
            raise PlotInputError(f"{system!r} ran all clips at once but the file has no 'clips' count")
        return re.sub(r",?\s*all at once", "", system).strip(), int(clips)
    for words in (", one at a time", " one at a time", " (sequential)", " sequential"):
        if words in system:
            return system.replace(words, "").strip(), 1
    return system, 1


def load_throughput(path: Path) -> list[ThroughputRow]:
    """Rows of one benchmark_throughput.py (or benchmark_offline.py) --json file."""
    data = read_results(path)
    rows = []
    for row in data["results"]:
        name, size = batch_size_of(row["system"], data.get("clips"))
        rows.append(ThroughputRow(name, size, float(row["rtfx"])))
    return rows


# --- curves -------------------------------------------------------------------------------------------
def empirical_cdf(values: list[float]) -> tuple[list[float], list[float]]:
    """Sorted samples and the share of samples at or below each, starting from 0 at the smallest."""
    ordered = sorted(values)
    return [ordered[0], *ordered], [0.0, *((i + 1) / len(ordered) for i in range(len(ordered)))]


def percentile_steps(points: dict[float, float]) -> tuple[list[float], list[float]]:
    """A step CDF through (seconds, quantile) points, starting at 0 on the first one."""
    pairs = sorted((seconds, q) for q, seconds in points.items())
    xs, ys = [pairs[0][0]], [0.0]
    for seconds, q in pairs:
        xs.append(seconds)
        ys.append(q)
    return xs, ys


def cdf_curve(system: str, values: list[float] | None, points: dict[float, float]) -> Curve | None:
    if values:
        return Curve(system, system, *empirical_cdf(values), exact=True)
    if points:
        return Curve(system, f"{system} (percentiles)", *percentile_steps(points), exact=False)
    return None


# --- figures ------------------------------------------------------------------------------------------
def save(fig, out_dir: Path, name: str) -> Path:
    path = out_dir / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def assign_colours(systems: set[str]) -> dict[str, str]:
    """One colour per system, the same in every figure of a run (matplotlib's default cycle, names sorted)."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {system: cycle[i % len(cycle)] for i, system in enumerate(sorted(systems))}


def line_plot(series: dict[str, list[tuple[float, float]]], colours: dict[str, str], xlabel: str, title: str,
              out_dir: Path, name: str) -> Path:
    """One line per system through its (x, RTFx) points; a log2 x axis, ticked at the data, when x spans more
    than a factor 8."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs_all = sorted({x for points in series.values() for x, _ in points})
    for system, points in sorted(series.items()):
        points = sorted(points)
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=system, color=colours[system])
    if xs_all[0] > 0 and xs_all[-1] / xs_all[0] > 8:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set(xlabel=xlabel, ylabel="RTFx (audio s / wall s)", title=title)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, out_dir, name)


def plot_serving_rtfx(rows: list[ServingRow], colours: dict[str, str], out_dir: Path) -> list[Path]:
    written = []
    closed, opened = defaultdict(list), defaultdict(list)
    for r in rows:
        if r.concurrency is not None:
            closed[r.system].append((r.concurrency, r.rtfx))
        else:
            opened[r.system].append((r.request_rate, r.rtfx))
    if closed:
        written.append(line_plot(closed, colours, "concurrent clients", "Serving: real-time factor vs concurrency",
                                 out_dir, "rtfx_vs_concurrency.png"))
    if opened:
        written.append(line_plot(opened, colours, "request rate (requests/s)",
                                 "Serving: real-time factor vs request rate", out_dir, "rtfx_vs_request_rate.png"))
    return written


def plot_throughput_rtfx(rows: list[ThroughputRow], colours: dict[str, str], out_dir: Path) -> Path:
    series = defaultdict(list)
    for r in rows:
        series[r.system].append((r.batch_size, r.rtfx))
    return line_plot(series, colours, "clips decoded together (batch size)",
                     "Offline: real-time factor vs batch size", out_dir, "rtfx_vs_batch_size.png")


def load_order(load: str) -> tuple[int, float]:
    kind, value = load.split(" ", 1)
    return (0 if kind == "concurrency" else 1, float(value.rstrip("/s")))


def plot_cdfs(panels: dict[str, list[Curve]], colours: dict[str, str], xlabel: str, title: str, out_dir: Path,
              name: str) -> Path:
    """One panel per load level, one CDF per system; percentile-only curves are dashed."""
    loads = sorted(panels, key=load_order)
    columns = min(len(loads), 3)
    rows = math.ceil(len(loads) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    for ax, load in zip(axes.flat, loads):
        for curve in panels[load]:
            style = dict(linestyle="-") if curve.exact else dict(linestyle="--", marker="o", markevery=slice(1, None))
            ax.step(curve.xs, curve.ys, where="post", label=curve.label, color=colours[curve.system], **style)
        ax.set(xlabel=xlabel, ylabel="share of requests", title=load, ylim=(0, 1.02))
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(loads):]:
        ax.set_visible(False)
    fig.suptitle(title)
    return save(fig, out_dir, name)


def plot_serving_cdfs(rows: list[ServingRow], colours: dict[str, str], out_dir: Path) -> list[Path]:
    written = []
    for metric, title, name in (("latency", "End-to-end latency CDF", "latency_cdf.png"),
                                ("ttft", "Time to first token CDF", "ttft_cdf.png")):
        panels: dict[str, list[Curve]] = defaultdict(list)
        for r in rows:
            if metric == "latency":
                curve = cdf_curve(r.system, r.latencies, r.latency_percentiles)
            else:
                curve = cdf_curve(r.system, r.ttfts, r.ttft_percentiles)
            if curve is not None:
                panels[r.load].append(curve)
        if panels:
            written.append(plot_cdfs(panels, colours, "seconds", title, out_dir, name))
    return written


# --- main ---------------------------------------------------------------------------------------------
def make_plots(serving: list[Path], throughput: list[Path], out_dir: Path) -> list[Path]:
    """Read every file, then write all the plots their contents allow; returns the written paths."""
    serving_rows = [row for path in serving for row in load_serving(path)]
    throughput_rows = [row for path in throughput for row in load_throughput(path)]
    out_dir.mkdir(parents=True, exist_ok=True)
    colours = assign_colours({r.system for r in [*serving_rows, *throughput_rows]})
    written = []
    if serving_rows:
        written += plot_serving_rtfx(serving_rows, colours, out_dir)
        written += plot_serving_cdfs(serving_rows, colours, out_dir)
    if throughput_rows:
        written.append(plot_throughput_rtfx(throughput_rows, colours, out_dir))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serving", type=Path, nargs="*", default=[], help="benchmark_serving.py --json files")
    parser.add_argument("--throughput", type=Path, nargs="*", default=[],
                        help="benchmark_throughput.py or benchmark_offline.py --json files")
    parser.add_argument("--out-dir", type=Path, default=Path("plots"), help="folder for the PNGs (created)")
    args = parser.parse_args(argv)
    if not args.serving and not args.throughput:
        parser.error("give at least one file with --serving or --throughput")
    try:
        written = make_plots(args.serving, args.throughput, args.out_dir)
    except PlotInputError as exc:
        parser.exit(2, f"plots.py: error: {exc}\n")
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
