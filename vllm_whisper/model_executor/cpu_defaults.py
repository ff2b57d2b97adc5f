"""What `--dtype auto` means on the CPU: the fastest precision whose accuracy was measured to hold.

Measured with benchmarks/benchmark_throughput.py and benchmark_accuracy.py (README "Performance"): int8 weights
with float32 activations are the fastest CPU configuration and keep WER within 0.01 of float32, but only where the
CPU has int8 dot-product instructions (VNNI / AMX); bfloat16 is next where the CPU computes bf16 natively; without
either, float32 stays the default because emulated int8 or bf16 is slower than float32.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger("vllm_whisper")

INT8_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FEATURES = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class CpuPrecision:
    """The precision `--dtype auto` loads on the CPU, and why, for the start-up log."""

    dtype: torch.dtype
    quantization: str | None  # "int8" or None
    reason: str

    @property
    def label(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"int8 weights, {dtype} activations" if self.quantization else dtype


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags the kernel reports for this CPU (empty where /proc/cpuinfo is absent)."""
    if not sys.platform.startswith("linux") or not cpuinfo.is_file():
        return frozenset()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def int8_matmul_available() -> bool:
    """Whether this PyTorch build runs the int8 matrix multiply the int8 linear layers use."""
    try:
        torch._int_mm(torch.ones(1, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    except RuntimeError:
        return False
    return True


def choose_cpu_precision(flags: frozenset[str], int8_matmul: bool = True) -> CpuPrecision:
    """int8 weights where the CPU has int8 dot products, else bfloat16 where it has native bf16, else float32."""
    int8_flags = sorted(flags.intersection(INT8_FEATURES))
    if int8_flags and int8_matmul:
        return CpuPrecision(torch.float32, "int8", f"CPU has {','.join(int8_flags)}")
    bf16_flags = sorted(flags.intersection(BF16_FEATURES))
    if bf16_flags:
        return CpuPrecision(torch.bfloat16, None, f"CPU has {','.join(bf16_flags)}, no int8 dot products")
    return CpuPrecision(torch.float32, None, "CPU has neither int8 dot products (VNNI/AMX) nor native bfloat16")


def auto_cpu_precision() -> CpuPrecision:
    """Detect this CPU once per load and log the choice in one line."""
    choice = choose_cpu_precision(cpu_flags(), int8_matmul_available())
    logger.info("CPU precision for --dtype auto: %s (%s); --dtype float32 loads plain float32",
                choice.label, choice.reason)
    return choice
