"""A one-line progress bar on stderr for `vllm-whisper transcribe`: files done / total, seconds of audio done and
the speed (audio seconds per wall-clock second). Drawn only when stderr is a terminal; silent when piped."""

from __future__ import annotations

import sys
import time
from typing import TextIO

REDRAW_INTERVAL_S = 0.1
CLEAR_LINE = "\r\x1b[K"


class ProgressBar:
    """Counts finished files; redraws at most every REDRAW_INTERVAL_S (always on the last file)."""

    def __init__(self, total: int, stream: TextIO | None = None, enabled: bool | None = None):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.done = 0
        self.audio_seconds = 0.0
        self.started = time.monotonic()
        self._drawn_at = 0.0
        self._visible = False

    def advance(self, audio_seconds: float = 0.0) -> None:
        """One more file finished (or failed: audio_seconds 0)."""
        self.done += 1
        self.audio_seconds += audio_seconds
        now = time.monotonic()
        if now - self._drawn_at >= REDRAW_INTERVAL_S or self.done == self.total:
            self.draw(now)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-6)
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        return (f"[{bar}] {self.done}/{self.total} files | {self.audio_seconds:.1f} s audio | "
                f"{self.audio_seconds / elapsed:.1f}x real time | {elapsed:.0f} s")

    def draw(self, now: float | None = None) -> None:
        if not self.enabled:
            return
        self.stream.write(CLEAR_LINE + self.line(now))
        self.stream.flush()
        self._drawn_at = now or time.monotonic()
        self._visible = True

    def clear(self) -> None:
        """Wipe the bar (before printing a result on the same terminal); the next draw() brings it back."""
        if self.enabled and self._visible:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()
            self._visible = False

    def close(self) -> None:
        """End the bar's line, leaving its last state on screen."""
        if self.enabled and self._visible:
            self.stream.write("\n")
            self.stream.flush()
            self._visible = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
