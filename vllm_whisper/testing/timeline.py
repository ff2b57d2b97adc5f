"""Long test files with a known timeline: sentences (or words) joined by silences of known length, so every
segment or word timestamp can be checked against where the speech really starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vllm_whisper.audio.decode import SAMPLE_RATE, load_audio
from vllm_whisper.testing.speech import synthesize

ONSET_FRACTION = 0.02  # a sample counts as speech above this fraction of the clip's peak


@dataclass(frozen=True)
class TimedText:
    text: str
    start: float  # seconds where the speech starts (first sample above the onset level)
    end: float


@dataclass
class Timeline:
    audio: np.ndarray
    items: list[TimedText]

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def text(self) -> str:
        return " ".join(item.text for item in self.items)


def speech_bounds(clip: np.ndarray) -> tuple[int, int]:
    """First and one-past-last sample above the onset level."""
    loud = np.flatnonzero(np.abs(clip) > ONSET_FRACTION * np.abs(clip).max())
    return (int(loud[0]), int(loud[-1]) + 1) if loud.size else (0, 0)


def build_timeline(texts: Sequence[str], folder: Path, gaps: Sequence[float], voices: Sequence[str] = ("slt",),
                   lead: float = 1.0, tail: float = 1.0, cache: dict[str, np.ndarray] | None = None) -> Timeline:
    """Speak each text with flite (voices in rotation), trimmed to its speech, with gaps[i % len(gaps)] seconds of
    silence after item i. `cache` reuses clips already synthesised (same text and voice)."""
    cache = {} if cache is None else cache
    parts = [np.zeros(int(lead * SAMPLE_RATE), dtype=np.float32)]
    position = len(parts[0])
    items = []
    for i, text in enumerate(texts):
        voice = voices[i % len(voices)]
        key = f"{voice}|{text}"
        if key not in cache:
            path = Path(folder) / f"tl_{len(cache):04d}.wav"
            clip = load_audio(synthesize(text, path, "flite", voice).path)
            start, end = speech_bounds(clip)
            cache[key] = clip[start:end]
        clip = cache[key]
        items.append(TimedText(text, position / SAMPLE_RATE, (position + len(clip)) / SAMPLE_RATE))
        gap = np.zeros(int(gaps[i % len(gaps)] * SAMPLE_RATE), dtype=np.float32)
        parts += [clip, gap]
        position += len(clip) + len(gap)
    parts.append(np.zeros(int(tail * SAMPLE_RATE), dtype=np.float32))
    return Timeline(np.concatenate(parts), items)


def fraction_within(times: Sequence[float], truth: Sequence[float], tolerance: float) -> float:
    """Share of `times` that lie within `tolerance` seconds of some true time."""
    if not times:
        return 0.0
    truth_array = np.asarray(truth)
    return float(np.mean([np.abs(truth_array - t).min() <= tolerance for t in times]))
