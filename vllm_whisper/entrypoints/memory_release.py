"""Give freed memory back to the operating system after a model is unloaded, so the process's RSS really falls.

Python's garbage collector breaks the reference cycles that keep tensors alive; glibc's malloc_trim then returns
the free pages of every malloc arena (the engine thread's included), which glibc otherwise keeps for reuse.
glibc also raises its mmap threshold as large blocks are freed (up to 32 MiB), after which weight-sized tensors
come from the heap, where live small objects pin them; a server that unloads models fixes the threshold at 1 MiB
first, so each tensor of 1 MiB or more is its own mapping and goes back to the system when freed. Measured on
base (tiny.en loaded beside it): without the fixed threshold RSS stayed ~260 MiB above its level before base
loaded; with it, within 1%.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

from vllm_whisper.engine.cpu_allocator import leave_allocator_alone

logger = logging.getLogger(__name__)


def release_memory() -> bool:
    """Collect garbage, empty the CUDA cache where one is in use, and trim the C heap; True if the trim ran."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    return _malloc_trim()


M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 2**20


def map_large_blocks_separately(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold (before models load), so freed tensors leave the process; False off glibc.
    Engines then keep this setting instead of their own CPU tuning (engine/cpu_allocator.py)."""
    leave_allocator_alone("models may unload: large blocks are mapped separately")
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def _malloc_trim() -> bool:
    """glibc's malloc_trim(0); False on a C library without it (musl, macOS), where RSS may stay higher."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        logger.debug("malloc_trim is not available; freed memory stays with the allocator")
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
