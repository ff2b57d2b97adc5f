"""Decode any container PyAV (FFmpeg) reads into 16 kHz mono float32, resampling with torchaudio.

Inputs are paths, raw bytes, binary file objects, or arrays that are already 16 kHz mono. Every failure a user
can cause (empty, truncated, not audio, no audio stream) becomes one AudioDecodeError with a readable message.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, np.ndarray, torch.Tensor]


class AudioDecodeError(ValueError):
    """The input could not be turned into audio samples; the message says why and what to do."""


def load_audio(source: AudioSource, name: str | None = None) -> np.ndarray:
    """Return the source as a 1-D float32 array of 16 kHz mono samples in [-1, 1]."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return _validate_array(source)
    label = name or _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise AudioDecodeError(f"{label}: no such audio file")
        with open(path, "rb") as fh:
            data = fh.read()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise AudioDecodeError(f"{label}: file object must be opened in binary mode")
        data = bytes(data)
    else:
        raise AudioDecodeError(f"unsupported audio input of type {type(source).__name__}")
    if len(data) == 0:
        raise AudioDecodeError(f"{label}: the file is empty")
    samples, rate = _decode_bytes(data, label)
    return resample_to_16k(samples, rate)


def resample_to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Downmix (channels, n) or (n,) audio and resample it to 16 kHz with torchaudio's windowed sinc."""
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if wave.dim() == 2:
        wave = wave.mean(dim=0)
    if rate != SAMPLE_RATE:
        wave = AF.resample(wave, orig_freq=int(rate), new_freq=SAMPLE_RATE)
    return wave.contiguous().numpy()


def _decode_bytes(data: bytes, label: str) -> tuple[np.ndarray, int]:
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise AudioDecodeError(
            f"{label}: not a readable audio file ({_reason(exc)}). Supported: wav, flac, mp3, ogg/oga, m4a/mp4, "
            f"webm, mpeg/mpga."
        ) from exc
    with container:
        if not container.streams.audio:
            raise AudioDecodeError(f"{label}: the file has no audio stream")
        stream = container.streams.audio[0]
        chunks: list[np.ndarray] = []
        rate = stream.rate or stream.codec_context.sample_rate
        try:
            for frame in container.decode(stream):
                rate = frame.sample_rate
                chunks.append(_frame_to_planar_float(frame))
        except (av.error.FFmpegError, ValueError, OSError) as exc:
            if not chunks:
                raise AudioDecodeError(f"{label}: the audio data is corrupt or truncated ({_reason(exc)})") from exc
            # A damaged tail after good frames: keep what decoded, as media players do.
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise AudioDecodeError(f"{label}: the file contains no audio samples (empty or truncated)")
    if not rate:
        raise AudioDecodeError(f"{label}: the audio stream has no sample rate")
    channels = min(c.shape[0] for c in chunks)
    samples = np.concatenate([c[:channels] for c in chunks], axis=1)
    if not np.isfinite(samples).all():
        raise AudioDecodeError(f"{label}: the decoded audio contains NaN or infinite samples")
    return samples, int(rate)


def _frame_to_planar_float(frame) -> np.ndarray:
    """One decoded frame as float32 (channels, samples), whatever its sample format."""
    array = frame.to_ndarray()
    fmt = frame.format
    channels = len(frame.layout.channels)
    if not fmt.is_planar:
        array = array.reshape(-1, channels).T
    if array.dtype == np.uint8:
        return (array.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max + 1)
    return array.astype(np.float32, copy=False)


def _validate_array(source: np.ndarray | torch.Tensor) -> np.ndarray:
    array = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else np.asarray(source)
    if array.ndim != 1:
        raise AudioDecodeError(f"audio arrays must be 1-D 16 kHz mono samples, got shape {tuple(array.shape)}")
    if array.size == 0:
        raise AudioDecodeError("the audio array is empty")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise AudioDecodeError("the audio array contains NaN or infinite samples")
    return array


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if hasattr(source, "name") and isinstance(getattr(source, "name"), str):
        return source.name  # type: ignore[union-attr]
    return "audio input"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
