"""Give freed memory back to the operating system after a model is unloaded, so the process's RSS really falls.

Python's garbage collector breaks the reference cycles that keep tensors alive; glibc's malloc_trim then returns
the free pages of every malloc arena (the engine thread's included), which glibc otherwise keeps for reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

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


def _malloc_trim() -> bool:
    """glibc's malloc_trim(0); False on a C library without it (musl, macOS), where RSS may stay higher."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        logger.debug("malloc_trim is not available; freed memory stays with the allocator")
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
