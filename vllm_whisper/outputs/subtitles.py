"""SRT and WebVTT subtitles from segments: numbered `HH:MM:SS,mmm` cues, or a WEBVTT file with `HH:MM:SS.mmm`."""

from __future__ import annotations

from typing import Iterable

from vllm_whisper.transcribe.result import Segment


def format_timestamp(seconds: float, decimal_marker: str = ".") -> str:
    """HH:MM:SS.mmm (hours always shown, as both SRT and VTT players accept)."""
    if seconds < 0:
        raise ValueError(f"timestamps cannot be negative, got {seconds}")
    total_ms = round(seconds * 1000.0)
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def srt_cue(index: int, segment: Segment) -> str:
    """One numbered SRT cue, ending with its blank line."""
    start, end = format_timestamp(segment.start, ","), format_timestamp(segment.end, ",")
    return f"{index}\n{start} --> {end}\n{segment.text.strip()}\n\n"


def vtt_cue(segment: Segment) -> str:
    """One WebVTT cue, ending with its blank line."""
    return f"{format_timestamp(segment.start)} --> {format_timestamp(segment.end)}\n{segment.text.strip()}\n\n"


VTT_HEADER = "WEBVTT\n\n"


def to_srt(segments: Iterable[Segment]) -> str:
    return "".join(srt_cue(i, s) for i, s in enumerate(segments, start=1))


def to_vtt(segments: Iterable[Segment]) -> str:
    return VTT_HEADER + "".join(vtt_cue(s) for s in segments)
