"""Windows as first-class engine objects: one cross-attention slot per 30 s window, shared by every request
that decodes it (language detection, the transcription pass, fallback retries, beams).

A window is encoded by the first request that needs it and its slot is freed when the last request using it
ends, unless the caller retains it (e.g. to retry at another temperature) and later releases it.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_whisper.engine.kv_cache import SlotPool


@dataclass
class WindowState:
    key: str
    slot: int | None = None
    refs: int = 0  # live requests attached
    retained: bool = False
    encoding: bool = False  # slot taken, encoder split across steps still running: not readable yet
    frames: int | None = None  # encoder frames its slot holds once encoded (1500, or fewer: engine/audio_context.py)


class WindowRegistry:
    def __init__(self, slots: SlotPool):
        self.slots = slots
        self.windows: dict[str, WindowState] = {}

    def attach(self, key: str, retain: bool) -> WindowState:
        state = self.windows.setdefault(key, WindowState(key))
        state.refs += 1
        state.retained = state.retained or retain
        return state

    def detach(self, state: WindowState) -> None:
        state.refs -= 1
        self._maybe_free(state)

    def release(self, key: str) -> bool:
        """The caller no longer needs the window; its slot is freed once no request uses it."""
        state = self.windows.get(key)
        if state is None:
            return False
        state.retained = False
        self._maybe_free(state)
        return True

    def _maybe_free(self, state: WindowState) -> None:
        if state.refs <= 0 and not state.retained:
            if state.slot is not None:
                self.slots.free(state.slot)
                state.slot = state.frames = None
            self.windows.pop(state.key, None)
