"""A stretch of 16 kHz audio in samples, with its times: what VAD spans and decoding chunks have in common."""

from __future__ import annotations

from dataclasses import dataclass

from vllm_whisper.audio.decode import SAMPLE_RATE


@dataclass(frozen=True)
class SampleSpan:
    """[start, end) in samples at 16 kHz."""

    start: int
    end: int

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE

    @property
    def num_samples(self) -> int:
        return self.end - self.start
