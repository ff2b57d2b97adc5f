"""The processes a launched server left behind, found by session id or an environment marker, and their CPU time:
Ray's raylet, GCS and workers may outlive the launcher, so teardown and the proxy's CPU cost both need them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcessInfo:
    """One live process: its id, its command line as it shows itself (Ray workers rename themselves `ray::...`)."""

    pid: int
    cmdline: str


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # gone, or not ours to read
        return b""


def _session_id(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def related_processes(session: int, marker: str | None) -> list[ProcessInfo]:
    """Live processes in `session`, or whose environment holds `marker` (a NAME=VALUE the launch exported)."""
    needle = marker.encode() if marker else None
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        in_session = _session_id(pid) == session
        marked = needle is not None and needle in _read(entry / "environ").split(b"\0")
        if in_session or marked:
            raw = _read(entry / "cmdline").replace(b"\0", b" ").strip()
            if raw:  # zombies and kernel threads have none
                found.append(ProcessInfo(pid, raw.decode(errors="replace")))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (0 once it is gone)."""
    stat = _read(PROC / str(pid) / "stat").decode(errors="replace")
    if not stat:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
