"""Cut long audio into pieces of at most 30 s (one Whisper window each) for parallel decoding.

Without speech spans the pieces tile the whole file and each cut sits in the quietest stretch of the last few
seconds before the limit, so words are not split. With speech spans (from vllm_whisper.audio.vad) whole spans are
packed into pieces and the cuts fall in the gaps between them; gaps between pieces are left out. No piece is
dropped for being silent: skipping digitally silent windows is the decoder's job (silence_threshold_db).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vllm_whisper.audio.decode import SAMPLE_RATE
from vllm_whisper.audio.features import CHUNK_SECONDS
from vllm_whisper.audio.spans import SampleSpan
from vllm_whisper.audio.vad import SpeechSpan, check_spans, validate_audio

FRAME_SAMPLES = 320  # 20 ms energy frames...
HOP_SAMPLES = 160  # ...every 10 ms
SMOOTH_FRAMES = 10  # averaged over 100 ms, so a stop consonant's brief closure does not look like a pause
QUIET_MARGIN_DB = 3.0  # frames within this much of the quietest frame count as quiet


@dataclass(frozen=True)
class Chunk(SampleSpan):
    """One piece of the audio, [start, end) in samples at 16 kHz."""


def plan_chunks(
    audio: np.ndarray,
    max_seconds: float = float(CHUNK_SECONDS),
    speech_spans: Sequence[SpeechSpan] | None = None,
    search_seconds: float = 5.0,
) -> list[Chunk]:
    """Sorted, non-overlapping chunks of at most `max_seconds` each.

    speech_spans None: the chunks tile [0, len(audio)); each cut is at the middle of the quietest stretch (100 ms
    smoothed RMS energy) within the last `search_seconds` before the limit.
    speech_spans given: consecutive spans are packed greedily while a chunk (first span's start to last span's
    end) fits; a span longer than max_seconds is cut at its quietest points as above. No spans gives no chunks.
    """
    audio = validate_audio(audio)
    max_samples, search_samples = _check_lengths(max_seconds, search_seconds)
    if speech_spans is None:
        return _tile(audio, 0, audio.size, max_samples, search_samples)
    spans = tuple(speech_spans)
    check_spans(spans, audio.size)
    pieces = [p for s in spans for p in _tile(audio, s.start, s.end, max_samples, search_samples)]
    return _pack(pieces, max_samples)


def _check_lengths(max_seconds: float, search_seconds: float) -> tuple[int, int]:
    max_samples = int(round(max_seconds * SAMPLE_RATE))
    if max_samples < 1:
        raise ValueError(f"max_seconds must be positive, got {max_seconds} (Whisper windows are 30 s)")
    if not 0.0 < search_seconds < max_seconds:
        raise ValueError(
            f"search_seconds must be positive and below max_seconds={max_seconds}, got {search_seconds}; "
            f"a few seconds (default 5) is enough to find a pause"
        )
    return max_samples, int(round(search_seconds * SAMPLE_RATE))


def _tile(audio: np.ndarray, start: int, end: int, max_samples: int, search_samples: int) -> list[Chunk]:
    """Chunks tiling [start, end), each cut at the quietest point of the search window before the limit."""
    chunks = []
    position = start
    while end - position > max_samples:
        limit = position + max_samples
        cut = quietest_point(audio, max(limit - search_samples, position + 1), limit)
        chunks.append(Chunk(position, cut))
        position = cut
    if end > position:
        chunks.append(Chunk(position, end))
    return chunks


def quietest_point(audio: np.ndarray, lo: int, hi: int) -> int:
    """A sample in (lo, hi]: the middle of the longest run of near-quietest 100 ms-smoothed energy frames."""
    window = audio[lo:hi].astype(np.float64)
    energy = _smoothed_energy_db(window)
    if energy.size == 0:
        return hi
    quiet = energy <= energy.min() + QUIET_MARGIN_DB
    first, last = _longest_run(quiet)
    middle = (first * HOP_SAMPLES + last * HOP_SAMPLES + FRAME_SAMPLES) // 2
    return min(max(lo + middle, lo + 1), hi)


def _smoothed_energy_db(window: np.ndarray) -> np.ndarray:
    """Mean-square energy (dB) of 20 ms frames every 10 ms, averaged over SMOOTH_FRAMES neighbouring frames."""
    if window.size < FRAME_SAMPLES:
        return np.zeros(0)
    squares = np.concatenate([[0.0], np.cumsum(window * window)])
    starts = np.arange(0, window.size - FRAME_SAMPLES + 1, HOP_SAMPLES)
    energy = (squares[starts + FRAME_SAMPLES] - squares[starts]) / FRAME_SAMPLES
    kernel = np.ones(min(SMOOTH_FRAMES, energy.size))
    counts = np.convolve(np.ones_like(energy), kernel, mode="same")  # fewer neighbours at the window's edges
    smoothed = np.convolve(energy, kernel, mode="same") / counts
    return 10.0 * np.log10(smoothed + 1e-10)


def _longest_run(mask: np.ndarray) -> tuple[int, int]:
    """(first, last) index of the longest run of True in `mask` (the latest one on ties); mask has a True."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, stops = edges[0::2], edges[1::2]
    lengths = stops - starts
    best = len(lengths) - 1 - int(np.argmax(lengths[::-1]))
    return int(starts[best]), int(stops[best]) - 1


def _pack(pieces: list[Chunk], max_samples: int) -> list[Chunk]:
    """Merge consecutive pieces greedily while the merged extent (gaps included) stays within max_samples."""
    chunks: list[Chunk] = []
    for piece in pieces:
        if chunks and piece.end - chunks[-1].start <= max_samples:
            chunks[-1] = Chunk(chunks[-1].start, piece.end)
        else:
            chunks.append(piece)
    return chunks
