"""Keep glibc from handing freed tensor memory back to the kernel between CPU engine steps.

By default glibc serves each allocation above 128 KB-32 MB with a fresh mmap and returns it on free, so every
encoder intermediate (a window's 9 MB MLP states, its 6.6 MB K/V) faults in zeroed pages again on every call, and
trims the heap top as soon as 2x that is free. Raising the mmap threshold to its 32 MB maximum and the trim
threshold to 1 GiB lets those buffers be reused from the heap: a tiny.en window's encoder forward goes from ~195
to ~165 ms on a 2-core EPYC (README "Performance"). The process keeps its peak heap instead of shrinking after a
burst. Skipped when the user already tuned malloc (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ /
GLIBC_TUNABLES), preloads another allocator (LD_PRELOAD of tcmalloc or jemalloc), or sets
VLLM_WHISPER_KEEP_MALLOC=1, off glibc, and in a server whose models may unload (it maps large blocks separately
instead, so an unloaded model's memory leaves the process: entrypoints/memory_release.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Mapping

logger = logging.getLogger("vllm_whisper")

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest accepted value on 64-bit
TRIM_THRESHOLD_BYTES = 2**30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
OTHER_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")
_applied = False
_left_alone_because: str | None = None


def leave_allocator_alone(reason: str) -> None:
    """Engines created from now on keep malloc's settings (the process manages them itself for `reason`)."""
    global _left_alone_because
    _left_alone_because = reason


def allocator_tuning_skipped(environ: Mapping[str, str]) -> str | None:
    """Why the tuning is left out under this environment, or None to apply it."""
    if _left_alone_because is not None:
        return _left_alone_because
    if environ.get("VLLM_WHISPER_KEEP_MALLOC", "") not in ("", "0"):
        return "VLLM_WHISPER_KEEP_MALLOC is set"
    tuned = [name for name in USER_SETTINGS if name in environ]
    if tuned:
        return f"{tuned[0]} is set"
    preload = environ.get("LD_PRELOAD", "")
    other = [name for name in OTHER_ALLOCATORS if name in preload]
    if other:
        return f"{other[0]} is preloaded"
    return None


def tune_cpu_allocator(environ: Mapping[str, str] = os.environ) -> bool:
    """Apply the thresholds once per process; True when they are in effect."""
    global _applied
    if _applied:
        return True
    reason = allocator_tuning_skipped(environ)
    if reason is None and not sys.platform.startswith("linux"):
        reason = "not Linux"
    mallopt = None if reason else _glibc_mallopt()
    if reason is None and mallopt is None:
        reason = "the C library is not glibc"
    if reason is not None:
        logger.debug("malloc thresholds left as they are: %s", reason)
        return False
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    if _applied:
        logger.info("CPU allocator: glibc keeps freed tensor memory for reuse (mmap threshold 32 MiB, trim threshold "
                    "1 GiB); VLLM_WHISPER_KEEP_MALLOC=1 leaves malloc as it is")
    return _applied


def _glibc_mallopt():
    """glibc's mallopt, or None on another C library."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it
        return libc.mallopt
    except (OSError, AttributeError):
        return None
