"""Chunk planning on a real 95 s recording of sentences with known pauses: cuts must land in the pauses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vllm_whisper.audio.chunking import Chunk, plan_chunks, quietest_point
from vllm_whisper.audio.decode import SAMPLE_RATE, load_audio
from vllm_whisper.audio.vad import SpeechSpan, detect_speech
from vllm_whisper.testing.speech import HARVARD_SENTENCES, synthesize

TOTAL_S = 95.0
GAPS_S = (0.5, 1.0, 1.5, 0.7)  # pauses between sentences, in rotation
MAX_SAMPLES = 30 * SAMPLE_RATE


def _speech_extent(clip: np.ndarray) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(clip) > 1e-3)
    return int(loud[0]), int(loud[-1]) + 1


@pytest.fixture(scope="module")
def long_recording(speech_dir: Path) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """95 s of Harvard sentences (two flite voices) with known pauses, and each sentence's true extent."""
    total = int(TOTAL_S * SAMPLE_RATE)
    parts, truth, position = [np.zeros(SAMPLE_RATE // 2, np.float32)], [], SAMPLE_RATE // 2
    for i, text in enumerate(HARVARD_SENTENCES):
        voice = ("slt", "rms")[i % 2]
        clip = load_audio(synthesize(text, speech_dir / f"chunk{i:02d}_{voice}.wav", "flite", voice).path)
        gap = np.zeros(int(GAPS_S[i % len(GAPS_S)] * SAMPLE_RATE), np.float32)
        if position + clip.size + gap.size > total:
            break
        first, last = _speech_extent(clip)
        truth.append((position + first, position + last))
        parts += [clip, gap]
        position += clip.size + gap.size
    audio = np.concatenate(parts + [np.zeros(total - position, np.float32)])
    assert audio.size == total and len(truth) >= 20
    return audio, truth


def _inside_speech(sample: int, truth: list[tuple[int, int]]) -> bool:
    return any(start < sample < end for start, end in truth)


def _assert_tiles(chunks: list[Chunk], start: int, end: int) -> None:
    assert chunks[0].start == start and chunks[-1].end == end
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:]))
    assert all(0 < c.num_samples <= MAX_SAMPLES for c in chunks)


@pytest.mark.parametrize("noise", [0.0, 0.003])
def test_cuts_fall_in_pauses(long_recording, noise):
    audio, truth = long_recording
    if noise:
        audio = audio + (noise * np.random.default_rng(2).standard_normal(audio.size)).astype(np.float32)
    chunks = plan_chunks(audio)
    _assert_tiles(chunks, 0, audio.size)
    assert len(chunks) == 4
    assert all(c.duration_s >= 25.0 for c in chunks[:-1])  # cut within the last 5 s before the limit
    for chunk in chunks[:-1]:
        assert not _inside_speech(chunk.end, truth), f"cut at {chunk.end_s:.2f} s splits a sentence"


def test_vad_spans_are_packed_and_cut_in_gaps(long_recording):
    audio, truth = long_recording
    spans = detect_speech(audio)
    assert len(spans) == len(truth)
    chunks = plan_chunks(audio, speech_spans=spans)
    assert all(0 < c.num_samples <= MAX_SAMPLES for c in chunks)
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:]))
    assert 4 <= len(chunks) <= 5
    for span in spans:  # every span lies whole inside exactly one chunk
        assert sum(c.start <= span.start and span.end <= c.end for c in chunks) == 1
    for chunk in chunks:
        assert not _inside_speech(chunk.start, truth) and not _inside_speech(chunk.end, truth)
    for start, end in truth:  # no speech is left out
        assert any(c.start <= start and end <= c.end for c in chunks)


def test_span_longer_than_limit_is_cut_at_pauses(long_recording):
    audio, truth = long_recording
    chunks = plan_chunks(audio, speech_spans=[SpeechSpan(SAMPLE_RATE, audio.size - SAMPLE_RATE)])
    _assert_tiles(chunks, SAMPLE_RATE, audio.size - SAMPLE_RATE)
    for chunk in chunks[:-1]:
        assert not _inside_speech(chunk.end, truth)


def test_short_file_is_one_chunk(long_recording):
    audio = long_recording[0][: 10 * SAMPLE_RATE]
    assert plan_chunks(audio) == [Chunk(0, audio.size)]
    assert plan_chunks(audio)[0].duration_s == 10.0


def test_exactly_thirty_seconds_is_one_chunk(long_recording):
    audio = long_recording[0][:MAX_SAMPLES]
    assert plan_chunks(audio) == [Chunk(0, MAX_SAMPLES)]
    longer = long_recording[0][: MAX_SAMPLES + 1]
    chunks = plan_chunks(longer)
    assert len(chunks) == 2
    _assert_tiles(chunks, 0, longer.size)


def test_empty_audio_and_no_spans_give_no_chunks():
    assert plan_chunks(np.zeros(0, np.float32)) == []
    assert plan_chunks(np.zeros(5 * SAMPLE_RATE, np.float32), speech_spans=[]) == []


def test_digital_silence_tiles_evenly():
    audio = np.zeros(70 * SAMPLE_RATE, np.float32)
    chunks = plan_chunks(audio)
    _assert_tiles(chunks, 0, audio.size)
    assert len(chunks) == 3


def test_quietest_point_finds_middle_of_pause():
    rng = np.random.default_rng(0)
    audio = (0.2 * rng.standard_normal(10 * SAMPLE_RATE)).astype(np.float32)
    audio[6 * SAMPLE_RATE : 7 * SAMPLE_RATE] *= 0.001
    cut = quietest_point(audio, 5 * SAMPLE_RATE, 10 * SAMPLE_RATE)
    assert abs(cut - 6.5 * SAMPLE_RATE) < 0.1 * SAMPLE_RATE


def test_custom_limit(long_recording):
    audio = long_recording[0]
    chunks = plan_chunks(audio, max_seconds=10.0, search_seconds=3.0)
    _assert_tiles(chunks, 0, audio.size)
    assert all(c.duration_s <= 10.0 for c in chunks)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_seconds": 0.0}, "max_seconds must be positive"),
        ({"search_seconds": 0.0}, "search_seconds"),
        ({"search_seconds": 30.0}, "search_seconds"),
        ({"speech_spans": [SpeechSpan(0, 100), SpeechSpan(50, 200)]}, "non-overlapping"),
        ({"speech_spans": [SpeechSpan(0, 10**9)]}, "outside"),
    ],
)
def test_bad_arguments_raise_actionable_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_chunks(np.zeros(SAMPLE_RATE, np.float32), **kwargs)


def test_bad_audio_raises():
    with pytest.raises(ValueError, match="mono"):
        plan_chunks(np.zeros((2, SAMPLE_RATE), np.float32))
