"""Cut one window's sampled tokens into timed segments and say where the next window starts.

The reference's rule: each pair of consecutive timestamp tokens closes a segment. If the window ends with a
closed pair, the next window starts at the last timestamp (speech may continue past it); if it ends with a lone
timestamp (or no timestamps), the whole window is consumed.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_whisper.audio.features import FRAMES_PER_SECOND
from vllm_whisper.tokenizer import WhisperTokenizer

INPUT_STRIDE = 2  # mel frames per timestamp token step (0.02 s / 0.01 s)


@dataclass
class SegmentSpan:
    """A segment before it is numbered: absolute times and its tokens."""

    start: float
    end: float
    tokens: list[int]


def split_window(
    tokens: list[int], tokenizer: WhisperTokenizer, seek: int, window_frames: int
) -> tuple[list[SegmentSpan], int]:
    """Spans of one decoded window (times in seconds from the file start) and the frames it consumed."""
    offset = seek / FRAMES_PER_SECOND
    is_ts = [tokenizer.is_timestamp(t) for t in tokens]
    single_timestamp_ending = len(tokens) >= 2 and is_ts[-2:] == [False, True]
    consecutive = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    spans: list[SegmentSpan] = []
    if consecutive:
        slices = consecutive + ([len(tokens)] if single_timestamp_ending else [])
        last = 0
        for current in slices:
            part = tokens[last:current]
            spans.append(SegmentSpan(
                offset + tokenizer.timestamp_seconds(part[0]), offset + tokenizer.timestamp_seconds(part[-1]), part,
            ))
            last = current
        if single_timestamp_ending:
            consumed = window_frames
        else:
            consumed = (tokens[last - 1] - tokenizer.timestamp_begin) * INPUT_STRIDE
    else:
        duration = window_frames / FRAMES_PER_SECOND
        stamps = [t for t in tokens if tokenizer.is_timestamp(t)]
        if stamps and stamps[-1] != tokenizer.timestamp_begin:
            duration = tokenizer.timestamp_seconds(stamps[-1])
        spans.append(SegmentSpan(offset, offset + duration, tokens))
        consumed = window_frames
    return spans, consumed if consumed > 0 else window_frames

