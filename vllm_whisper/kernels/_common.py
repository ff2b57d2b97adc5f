"""What every kernel wrapper checks before launching: a device Triton can run on, supported shapes, and the
dot-product precision that keeps float32 exact (no TF32) while float16 / bfloat16 use the tensor cores."""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def is_interpreted(kernel) -> bool:
    """Whether a @triton.jit kernel was built for the interpreter (TRITON_INTERPRET=1 when it was defined)."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_device(kernel, *tensors: Tensor) -> None:
    devices = {t.device.type for t in tensors}
    if devices == {"cuda"}:
        return
    if devices == {"cpu"} and is_interpreted(kernel):
        return
    raise RuntimeError(
        f"Triton kernels need CUDA tensors (got {sorted(devices)}); on the CPU they run only in the Triton "
        "interpreter: set TRITON_INTERPRET=1 before vllm_whisper.kernels is first imported"
    )


POISON_OUTPUTS = False  # tests set this: every buffer a kernel must fill starts as NaN, so a missed write shows


def alloc(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """torch.empty, NaN-filled while POISON_OUTPUTS is set."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if POISON_OUTPUTS:
        t.fill_(float("nan"))
    return t


def check_head_dim(head_dim: int) -> None:
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        raise ValueError(f"Triton attention supports power-of-two head dims from 16 to 256, got {head_dim}")


def check_dtype(t: Tensor) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported dtype {t.dtype}; expected one of {SUPPORTED_DTYPES}")


def dot_precision(dtype: torch.dtype) -> str:
    """float32 stays IEEE (it is the exact oracle dtype); half types use the tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of the device (1 under the interpreter, where more programs only cost time)."""
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def capability(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda":
        return (0, 0)
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


def tensor_core_dots(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether tl.dot runs on tensor cores. Triton 3.6 lowers dots to FMA on Turing (7.5) and for IEEE float32,
    where large tiles spill registers, so those get small tiles (or, for the encoder, torch SDPA: see selector)."""
    return device.type == "cuda" and dtype != torch.float32 and capability(device) >= (8, 0)


def default_block(device: torch.device, cuda: int, interpreter: int) -> int:
    """A tile size: the tuned one on CUDA, a large one under the interpreter (whose cost is per operation)."""
    return cuda if device.type == "cuda" else interpreter


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def patch_interpreter_for_numpy_2_4() -> None:
    """Triton 3.6's interpreter turns loop bounds into ints with int(1-element array), which numpy >= 2.4 refuses
    (triton-lang/triton#9171, fixed upstream by #9172). Re-register __index__ the fixed way; interpreter only."""
    import numpy as np

    if not interpreting():
        return
    try:
        int(np.array([1]))
        return  # older numpy: nothing to fix
    except TypeError:
        pass
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_vllm_whisper_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._vllm_whisper_fixed = True
    interpreter._patch_lang_tensor = patched
