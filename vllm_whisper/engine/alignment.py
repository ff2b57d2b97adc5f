"""Alignment requests: a teacher-forced decoder pass over a window's known text that the engine runs in a step,
reading the window's cross K/V from its slot, and returns as the DTW-ready token x frame matrix of the
alignment heads (word timestamps; the DTW and word grouping are post-processing in transcribe/alignment.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from vllm_whisper.audio.features import N_FRAMES
from vllm_whisper.engine.windows import WindowState


@dataclass(frozen=True)
class AlignmentParams:
    """What to align and how to shape the similarity matrix (the openai-whisper defaults)."""

    text_tokens: tuple[int, ...]  # the window's text tokens, no timestamps
    num_frames: int  # mel frames of real audio in the window (2..3000); attention beyond it is ignored
    medfilt_width: int = 7
    qk_scale: float = 1.0

    def validate(self, eot: int) -> None:
        """ValueError with the fix when the request cannot be aligned."""
        if not 2 <= self.num_frames <= N_FRAMES:
            raise ValueError(f"num_frames must be between 2 and {N_FRAMES} mel frames, got {self.num_frames}")
        if any(not 0 <= t < eot for t in self.text_tokens):
            raise ValueError("text_tokens must be ordinary text tokens (ids below <|endoftext|>); drop timestamps")
        if self.medfilt_width < 1 or self.medfilt_width % 2 == 0:
            raise ValueError(f"medfilt_width must be a positive odd number, got {self.medfilt_width}")


@dataclass
class AlignmentOutput:
    """The pass's result for one window."""

    matrix: np.ndarray  # (text tokens + 1, num_frames // 2) float64 similarity; the last row is <|endoftext|>
    token_probs: list[float]  # probability of each text token given the ones before it


@dataclass
class AlignmentRequest:
    """Engine-side state of one alignment pass: prompt + text + <|endoftext|> over one window."""

    request_id: str
    features: Tensor  # (n_mels, 3000): encoded only when the window has no slot yet
    prompt: list[int]  # <|startoftranscript|> .. <|notimestamps|>
    params: AlignmentParams
    eot: int
    window: WindowState | None = None
    arrival_time: float = field(default_factory=time.monotonic)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + list(self.params.text_tokens) + [self.eot]

    @property
    def cross_slot(self) -> int | None:
        return None if self.window is None else self.window.slot

    @property
    def audio_seconds(self) -> float:
        """Seconds of real audio in the window (sizes a shortened audio context when this request encodes it)."""
        return self.params.num_frames / 100
