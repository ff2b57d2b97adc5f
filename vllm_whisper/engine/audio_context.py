"""Shortened audio context (whisper.cpp's audio_ctx): a window holding less than 30 s of audio is encoded over only
the encoder frames its audio needs plus a margin, rounded up to a bucket, so the encoder and every decode step's
cross-attention read a fraction of the 1500 frames. `--audio-context full` (the default) keeps every window at 1500.

Buckets keep encoder batches exact (windows are grouped by length, no attention mask) and the number of shapes
small; the margin gives the model the silence after the speech it is used to (whisper.cpp users find that without
one the last words are dropped or repeated). A window whose words will be aligned is always encoded whole
(Request.full_audio_context): the alignment heads time words well only over the 1500 frames they were trained on."""

from __future__ import annotations

import math

import torch
from torch import Tensor

FRAMES_PER_SECOND = 50  # encoder frames per second of audio (20 ms each; mel frames are twice as many)
BUCKET_FRAMES = 128  # lengths are rounded up to a multiple of this
MIN_FRAMES = 1024  # 20.48 s: tiny.en at 256 or 768 frames loops on 2-3 s sentences (benchmarks/README.md)
MARGIN_FRAMES = 50  # 1 s of padding kept after the audio


def encoder_frames(mode: str, audio_seconds: float, max_frames: int) -> int:
    """Encoder frames a window is encoded over: max_frames under `full` or when its audio nearly fills the window,
    else ceil(audio x 50) + the margin, rounded up to the bucket, at least MIN_FRAMES."""
    if mode == "full" or audio_seconds <= 0:
        return max_frames
    needed = math.ceil(audio_seconds * FRAMES_PER_SECOND - 1e-6) + MARGIN_FRAMES
    frames = max(MIN_FRAMES, -(-needed // BUCKET_FRAMES) * BUCKET_FRAMES)
    return max_frames if frames >= max_frames else frames


def last_timestamp_index(audio_seconds: float) -> int:
    """The timestamp token index (0.02 s each) at the end of a window's audio, rounded up."""
    return math.ceil(audio_seconds * FRAMES_PER_SECOND - 1e-6)


def cap_timestamps(logits: Tensor, caps: list[int | None], timestamp_begin: int) -> Tensor:
    """`logits` with every timestamp after row b's cap at -inf (a copy; `logits` itself when no row has a cap), so a
    shortened window, whose encoder saw no frames past its audio, never times a segment past it. Applied before
    Whisper's rules, as if the model gave those tokens no probability."""
    if all(cap is None for cap in caps):
        return logits
    vocab = logits.shape[-1]
    first_masked = torch.tensor([vocab if cap is None else timestamp_begin + cap + 1 for cap in caps],
                                device=logits.device)
    columns = torch.arange(vocab, device=logits.device)
    return logits.masked_fill(columns[None, :] >= first_masked[:, None], float("-inf"))
