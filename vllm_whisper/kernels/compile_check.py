"""Compile every kernel ahead of time for real GPU architectures, without a GPU, and report registers and spills.

    python -m vllm_whisper.kernels.compile_check 75 80 90

Each kernel is compiled at the tiles its wrapper launches with, with the specialisation a launch gives it (head-dim
strides equal to 1, pointers and other strides divisible by 16), then disassembled with the cuobjdump that ships
with Triton. Exit status 1 when a kernel fails to compile, or when one that must not spill does (the
bandwidth-bound decode kernels and the store everywhere, the encoder where it has tensor cores).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def compile_for(kernel, cap: int, pointers: dict, constexprs: dict, num_warps: int = 4,
                num_stages: int = 2) -> tuple[int, int]:
    """(registers per thread, spill stores in the SASS) of the kernel compiled for sm_<cap>."""
    constexprs = {**constexprs, **{n: 1 for n in kernel.arg_names if n.startswith("s_") and n.endswith("d")}}
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        signature[name] = pointers.get(name, "fp32" if name == "qk_scale" else "i32")
        if signature[name].startswith("*") or name.startswith("s_") or name == "FRAMES_PER_SPLIT":
            attrs[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", cap, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    return registers, len(re.findall(r"\bSTL\b", sass))


def check(cap: int) -> list[str]:
    """Compile everything for one architecture; return the failures."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("run without TRITON_INTERPRET: compiling needs Triton's compiled mode")
    from vllm_whisper.kernels import cross_attention as C
    from vllm_whisper.kernels import encoder_attention as E
    from vllm_whisper.kernels import kv_store as S
    from vllm_whisper.kernels import paged_attention as P

    failures = []
    heads = dict(H=20, HEAD_DIM=64)
    for dtype in ["fp16", "fp32"] + (["bf16"] if cap >= 80 else []):
        ptr = "*" + dtype
        io = dict(Q=ptr, K=ptr, V=ptr, O=ptr, KC=ptr, VC=ptr, O_PART="*fp32", LSE_PART="*fp32", SLOTS="*i32", LENS="*i32",
                  BT="*i32", PAST="*i32", CTX="*i32")
        precision = "ieee" if dtype == "fp32" else "tf32"
        tensor_cores = cap >= 80 and dtype != "fp32"  # mirrors _common.tensor_core_dots
        enc = (128, 64, 8, 3) if tensor_cores else (16, 16, 4, 2)  # mirrors encoder_attention.default_config
        cases = [
            ("encoder", E._encoder_attention_kernel, io,
             dict(**heads, BLOCK_M=enc[0], BLOCK_N=enc[1], PRECISION=precision), enc[2], enc[3], tensor_cores),
            ("cross decode", C._cross_decode_kernel, io, dict(**heads, NUM_SPLITS=1, BLOCK_N=64), 4, 2, True),
            ("cross decode split", C._cross_decode_kernel, io, dict(**heads, NUM_SPLITS=4, BLOCK_N=64), 4, 2, True),
            ("cross prefill", C._cross_prefill_kernel, io, dict(**heads, NUM_SPLITS=4, BLOCK_M=16,
             BLOCK_N=64 if tensor_cores else 32, PRECISION=precision), 4, 2, False),
            ("combine splits", C._combine_splits_kernel, io, dict(**heads, NUM_SPLITS=4, BLOCK_S=4), 1, 2, True),
            ("paged decode", P._paged_decode_kernel, io, dict(**heads, BLOCK_SIZE=16, BLOCK_N=64), 4, 2, True),
            ("paged prefill", P._paged_prefill_kernel, io, dict(**heads, BLOCK_SIZE=16,
             BLOCK_M=64 if tensor_cores else 16, BLOCK_N=32, PRECISION=precision), 4, 2, False),
            ("kv store", S._store_kv_kernel, dict(K=ptr, V=ptr, KC=ptr, VC=ptr, SLOTS="*i64"),
             dict(**heads, BLOCK_H=32), 4, 2, True),
        ]
        for name, kernel, pointers, constexprs, warps, stages, must_not_spill in cases:
            label = f"sm_{cap} {dtype:<4} {name:<18}"
            try:
                registers, spills = compile_for(kernel, cap, pointers, constexprs, warps, stages)
            except Exception as exc:  # noqa: BLE001 - report every failure, then exit 1
                failures.append(f"{label} does not compile: {exc}")
                print(f"{label} FAILED to compile")
                continue
            bad = must_not_spill and spills
            print(f"{label} {'SPILLS' if bad else 'ok'} {registers:>3} registers, {spills} spill stores")
            if bad:
                failures.append(f"{label} spills registers ({spills} stores)")
    return failures


def main(argv: list[str]) -> int:
    failures = [f for cap in (argv or ["75", "80", "90"]) for f in check(int(cap))]
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
