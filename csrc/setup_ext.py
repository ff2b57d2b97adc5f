"""How vllm_whisper._C is built: one place for the sources and flags that setup.py, scripts/build_ext.sh and the
nvcc compile-only check share.

The extension needs torch at build time, and torch is a runtime dependency: a plain `pip install -e .` runs in
pip's isolated build environment, finds no torch here and installs the Python package alone (every op then
falls back to torch). `scripts/build_ext.sh` (run by scripts/bootstrap.sh after the install) builds it in place
with the environment's torch: `python setup.py build_ext --inplace`. `pip install --no-build-isolation -e .`
also builds it; a failed build there is skipped, not fatal (the extension is optional).

Environment:
  VLLM_WHISPER_TARGET_DEVICE  auto (default): CUDA kernels when torch is a CUDA build, nvcc is found and a GPU is
                              visible; cpu: C++ CPU ops only; cuda: CUDA kernels too, without a visible GPU (e.g.
                              a docker build); none: no extension.
  VLLM_WHISPER_CUDA_ARCHS     CUDA architectures, ';'-separated (default 7.5;8.0;8.6;8.9;9.0; TORCH_CUDA_ARCH_LIST
                              is honoured when this is unset).
  CUDA_HOME                   the CUDA toolkit (default: /usr/local/cuda, else the directory above `which nvcc`).
  MAX_JOBS                    parallel compile jobs (ninja).

CLI: `python csrc/setup_ext.py check-cuda [--arch 75 --arch 90]` compiles csrc/cuda/*.cu with nvcc (-c only,
against torch's headers, the flags of the real build) and checks the CUDA bindings against them: build breaks
in the CUDA sources show on machines without a GPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0"
EXTENSION = "vllm_whisper._C"

# After Python's CFLAGS (-g -O3): no debug info, OpenMP as in torch, and no fused multiply-add contraction (the int8
# rescale must round as its torch reference does, also when someone adds -march=native).
CXX_FLAGS = ["-O3", "-g0", "-fopenmp", "-ffp-contract=off"]
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr"]
# What torch.utils.cpp_extension adds to every nvcc command (half/bf16 go through c10's types).
TORCH_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]


def sources(kind: str) -> list[str]:
    """Source files relative to the repository root (setup.py's directory)."""
    if kind == "cpu":
        files = [CSRC / "torch_bindings.cpp", *sorted((CSRC / "cpu").glob("*.cpp"))]
    else:
        files = sorted((CSRC / "cuda").glob("*.cu"))
    return [str(f.relative_to(ROOT)) for f in files]


def find_cuda_home() -> str | None:
    """A CUDA toolkit with nvcc and headers. `which nvcc` can be a wrapper script outside the toolkit, so the
    directory above it is the last guess, and every guess must hold include/cuda_runtime.h."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for home in candidates:
        if home and (Path(home) / "bin" / "nvcc").exists() and (Path(home) / "include" / "cuda_runtime.h").exists():
            return home
    return None


def cuda_archs() -> list[str]:
    value = os.environ.get("VLLM_WHISPER_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS
    return [a for a in value.replace(" ", ";").split(";") if a]


def gencode_flags(archs: list[str]) -> list[str]:
    """'7.5' -> -gencode arch=compute_75,code=sm_75; '9.0+PTX' also embeds PTX for newer GPUs."""
    flags = []
    for arch in archs:
        num = arch.removesuffix("+PTX").replace(".", "")
        flags += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
        if arch.endswith("+PTX"):
            flags += ["-gencode", f"arch=compute_{num},code=compute_{num}"]
    return flags


def target_device() -> str:
    """'none', 'cpu' or 'cuda' for this environment (see the module docstring)."""
    choice = os.environ.get("VLLM_WHISPER_TARGET_DEVICE", "auto").lower()
    if choice not in ("auto", "cpu", "cuda", "none"):
        raise ValueError(f"VLLM_WHISPER_TARGET_DEVICE must be auto, cpu, cuda or none, got {choice!r}")
    if choice in ("cpu", "none"):
        return choice
    import torch

    cuda_possible = torch.version.cuda is not None and find_cuda_home() is not None
    if choice == "cuda":
        if not cuda_possible:
            raise RuntimeError("VLLM_WHISPER_TARGET_DEVICE=cuda needs a CUDA build of torch and nvcc (CUDA_HOME)")
        return "cuda"
    return "cuda" if cuda_possible and torch.cuda.is_available() else "cpu"


def extension_kwargs() -> dict:
    """setup() keywords that build vllm_whisper._C, or {} when torch is not importable (pip's isolated build)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return {}
    device = target_device()
    if device == "none":
        return {}
    if device == "cuda":
        os.environ["CUDA_HOME"] = find_cuda_home() or ""
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(cuda_archs())
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    common = dict(
        include_dirs=[str(CSRC)],
        extra_link_args=["-fopenmp"],
        optional=True,  # a failed build leaves the Python package working on its torch fallbacks
    )
    if device == "cuda":
        ext = CUDAExtension(
            EXTENSION, sources("cpu") + sources("cuda"), define_macros=[("VLLM_WHISPER_CUDA", None)],
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": NVCC_FLAGS}, **common,
        )
    else:
        ext = CppExtension(EXTENSION, sources("cpu"), extra_compile_args={"cxx": CXX_FLAGS}, **common)
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


# --- nvcc compile-only check -------------------------------------------------------------------------------------

def _torch_compile_flags() -> tuple[list[str], list[str]]:
    """(include flags, defines) of torch's extension build, without importing torch's CUDA runtime."""
    import torch

    torch_dir = Path(torch.__file__).parent
    includes = [torch_dir / "include", torch_dir / "include" / "torch" / "csrc" / "api" / "include", CSRC]
    defines = [f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", "-DTORCH_EXTENSION_NAME=_C",
               "-DTORCH_API_INCLUDE_EXTENSION_H", "-DVLLM_WHISPER_CUDA"]
    return [f"-I{p}" for p in includes], defines


def _run(cmd: list[str]) -> tuple[list[str], int, str, float]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return cmd, proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start


def check_cuda(archs: list[str], jobs: int, out_dir: Path | None = None) -> int:
    """Compile every csrc/cuda/*.cu with nvcc -c for `archs`, compile the CUDA bindings with the host compiler,
    and check that every CUDA op the bindings reference is defined by the CUDA objects. Returns 0 when all pass."""
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="vllm_whisper_nvcc_") as tmp:
            return check_cuda(archs, jobs, Path(tmp))
    cuda_home = find_cuda_home()
    if cuda_home is None:
        print("check-cuda: no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)", file=sys.stderr)
        return 2
    nvcc = str(Path(cuda_home) / "bin" / "nvcc")
    includes, defines = _torch_compile_flags()
    cuda_include = f"-I{Path(cuda_home) / 'include'}"
    work = out_dir
    work.mkdir(parents=True, exist_ok=True)
    cxx = os.environ.get("CXX", "c++")
    commands = []
    for src in sources("cuda"):
        obj = work / (Path(src).stem + ".o")
        commands.append([nvcc, "-c", str(ROOT / src), "-o", str(obj), "-std=c++17", "-Xcompiler", "-fPIC",
                         *TORCH_NVCC_FLAGS, *NVCC_FLAGS, *defines, *includes, cuda_include, *gencode_flags(archs)])
    bindings = work / "torch_bindings_cuda.o"
    commands.append([cxx, "-c", str(CSRC / "torch_bindings.cpp"), "-o", str(bindings), "-std=c++17", "-fPIC",
                     "-O0", "-g0", *defines, *includes, cuda_include, f"-I{sysconfig.get_paths()['include']}"])
    print(f"check-cuda: {nvcc} for {', '.join(archs)}; {len(commands)} compiles, {jobs} at a time", flush=True)
    start = time.perf_counter()
    failed = 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for cmd, rc, output, seconds in pool.map(_run, commands):
            name = Path(cmd[2]).name
            print(f"  {name}: {'ok' if rc == 0 else 'FAILED'} in {seconds:.1f}s", flush=True)
            if rc != 0:
                failed += 1
            if output.strip():  # errors, and warnings of a passing compile
                print(output, file=sys.stderr)
    if failed:
        return 1
    # Link-level check without linking: every vllm_whisper *_cuda function the bindings call is defined.
    needed = _symbols(bindings, undefined=True)
    defined = set().union(*(_symbols(work / (Path(s).stem + ".o"), undefined=False) for s in sources("cuda")))
    missing = sorted(s for s in needed if "_cuda" in s and "vllm_whisper" in s and s not in defined)
    if missing:
        print("check-cuda: the CUDA bindings reference ops the .cu files do not define:\n  " + "\n  ".join(missing),
              file=sys.stderr)
        return 1
    print(f"check-cuda: all CUDA sources compile ({time.perf_counter() - start:.1f}s)")
    return 0


def _symbols(obj: Path, undefined: bool) -> set[str]:
    args = ["nm", "-C", "--undefined-only" if undefined else "--defined-only", str(obj)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return {line.split(None, 2)[-1] if not undefined else line.split(None, 1)[-1]
            for line in out.splitlines() if line.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-cuda", help="compile the CUDA sources with nvcc (-c only)")
    check.add_argument("--arch", action="append", help="e.g. 75 or 9.0 (repeatable; default 75 and 90)")
    check.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", os.cpu_count() or 1)))
    check.add_argument("--out", type=Path, help="keep the objects here (default: a temporary folder)")
    args = parser.parse_args(argv)
    archs = [a if "." in a else f"{a[:-1]}.{a[-1]}" for a in (args.arch or ["75", "90"])]
    return check_cuda(archs, max(1, args.jobs), args.out)


if __name__ == "__main__":
    sys.exit(main())
