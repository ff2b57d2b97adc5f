"""Shared by the benchmark scripts: the machine description, WER scoring and the printed / JSON result table."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}{gpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def progress(iterable=None, **kwargs):
    """A tqdm bar on a terminal (stderr), silent otherwise, so long runs show where they are without filling logs."""
    from tqdm import tqdm

    return tqdm(iterable, disable=not sys.stderr.isatty(), leave=False, **kwargs)


def report(title: str, rows: list[dict], references: list[str], json_path: Path | None, **meta) -> None:
    """Score each row's texts against the references, print the table, and write JSON when asked."""
    from vllm_whisper.testing.speech import word_error_rate

    for row in rows:
        row["wer"] = word_error_rate(references, row.pop("texts"))
    machine = machine_description()
    width = max(len(row["system"]) for row in rows) + 2
    print(f"\n{title}")
    print(f"Machine: {machine}")
    print(f"{'system':<{width}} {'wall s':>8} {'RTFx':>8} {'tokens/s':>9} {'WER':>7}")
    for row in rows:
        print(f"{row['system']:<{width}} {row['wall_s']:>8.2f} {row['rtfx']:>8.1f} {row['tokens_per_s']:>9.1f} "
              f"{row['wer']:>7.4f}")
    if json_path:
        json_path.write_text(json.dumps({**meta, "machine": machine, "date": time.strftime("%Y-%m-%d"),
                                         "results": rows}, indent=2))
