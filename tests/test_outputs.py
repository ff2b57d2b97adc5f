"""Golden tests for the subtitle writers."""

from __future__ import annotations

import pytest

from vllm_whisper.outputs import format_timestamp, to_srt, to_vtt
from vllm_whisper.transcribe.result import Segment, compression_ratio

SEGMENTS = [
    Segment(0, 0, 0.0, 2.96, " The quick brown fox.", []),
    Segment(1, 0, 3.5, 61.004, " Jumps over the lazy dog.", []),
    Segment(2, 6000, 3725.25, 3726.5, " Over an hour in.", []),
]


def test_format_timestamp():
    assert format_timestamp(0) == "00:00:00.000"
    assert format_timestamp(61.0049) == "00:01:01.005"
    assert format_timestamp(3725.25, ",") == "01:02:05,250"
    with pytest.raises(ValueError):
        format_timestamp(-1)


def test_srt_golden():
    assert to_srt(SEGMENTS) == (
        "1\n00:00:00,000 --> 00:00:02,960\nThe quick brown fox.\n\n"
        "2\n00:00:03,500 --> 00:01:01,004\nJumps over the lazy dog.\n\n"
        "3\n01:02:05,250 --> 01:02:06,500\nOver an hour in.\n\n"
    )


def test_vtt_golden():
    assert to_vtt(SEGMENTS) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:02.960\nThe quick brown fox.\n\n"
        "00:00:03.500 --> 00:01:01.004\nJumps over the lazy dog.\n\n"
        "01:02:05.250 --> 01:02:06.500\nOver an hour in.\n\n"
    )


def test_compression_ratio_flags_repetition():
    assert compression_ratio("") == 0.0
    assert compression_ratio("the quick brown fox jumps over the lazy dog") < 1.5
    assert compression_ratio("thank you. " * 40) > 2.4
