"""Transcription results: segments with timestamps and the per-file result, as every output format needs them."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field


def compression_ratio(text: str) -> float:
    """How repetitive a text is (the reference's hallucination signal): raw bytes / zlib-compressed bytes."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass
class Word:
    """One word with its time span (from cross-attention alignment) and its mean token probability."""

    word: str  # with its leading space, as decoded
    start: float
    end: float
    probability: float


@dataclass
class Segment:
    """One timed span of text, with the fields OpenAI's verbose_json reports."""

    id: int
    seek: int  # mel frame offset of the window this segment came from
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: list[Word] | None = None  # filled when word timestamps are asked for


@dataclass
class TranscriptionResult:
    """The transcript of one input."""

    text: str
    language: str
    duration: float  # seconds of audio
    segments: list[Segment] = field(default_factory=list)
    language_probability: float | None = None
