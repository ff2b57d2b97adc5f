"""Decode any container PyAV (FFmpeg) reads into 16 kHz mono float32, resampling with torchaudio.

Inputs are paths, raw bytes, binary file objects, or arrays that are already 16 kHz mono. Every failure a user
can cause (empty, truncated, not audio, no audio stream, absurd rates, amplitudes or durations) becomes one
AudioDecodeError with a readable message, and no input makes decoding or resampling take unbounded memory.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000
MIN_SOURCE_RATE = 1000  # below this a file holds no usable speech, and a tiny upload would expand enormously
# Decoded samples live in [-1, 1] (float files may overshoot a little). Far beyond that the log-mel power overflows
# float32 (about 1e17), so a crafted file could feed inf/NaN features to the engine: refuse it here, with room to spare.
MAX_SAMPLE_MAGNITUDE = 1e6
# torchaudio's windowed-sinc kernel holds (new/gcd) x (orig/gcd) taps: small for the usual rates (44.1 kHz: 160 x 441),
# gigabytes for a rate coprime with 16 kHz (44101 Hz). Past this many taps the streaming libswresample path is used.
MAX_SINC_KERNEL_TAPS = 1_000_000

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, np.ndarray, torch.Tensor]


class AudioDecodeError(ValueError):
    """The input could not be turned into audio samples; the message says why and what to do."""


class AudioTooLongError(AudioDecodeError):
    """The audio is longer than the caller's duration limit (found while decoding, before any resampling)."""


def load_audio(source: AudioSource, name: str | None = None, max_duration_s: float | None = None) -> np.ndarray:
    """Return the source as a 1-D float32 array of 16 kHz mono samples in [-1, 1].

    With max_duration_s, longer audio raises AudioTooLongError as soon as decoding passes the limit."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return _validate_array(source, max_duration_s)
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
    samples, rate = _decode_bytes(data, label, max_duration_s)
    return resample_to_16k(samples, rate)


def resample_to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Downmix (channels, n) or (n,) audio and resample it to 16 kHz in bounded memory for any rate: torchaudio's
    windowed sinc for the usual rates, libswresample (streaming) where the sinc kernel would be huge."""
    rate = int(rate)
    if rate < MIN_SOURCE_RATE:
        raise AudioDecodeError(f"the sample rate {rate} Hz is below the supported minimum of {MIN_SOURCE_RATE} Hz")
    wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if wave.dim() == 2:
        wave = wave.mean(dim=0)
    if rate != SAMPLE_RATE:
        common = math.gcd(rate, SAMPLE_RATE)
        if (rate // common) * (SAMPLE_RATE // common) <= MAX_SINC_KERNEL_TAPS:
            wave = AF.resample(wave, orig_freq=rate, new_freq=SAMPLE_RATE)
        else:
            return _swresample(wave.contiguous().numpy(), rate)
    return wave.contiguous().numpy()


def _swresample(mono: np.ndarray, rate: int, block: int = 1 << 16) -> np.ndarray:
    """Resample mono float32 audio to 16 kHz with FFmpeg's libswresample, one block at a time (memory stays
    proportional to the audio, whatever the ratio of the rates)."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    pieces: list[np.ndarray] = []

    def collect(frames) -> None:
        pieces.extend(frame.to_ndarray().reshape(-1) for frame in frames)

    for start in range(0, len(mono), block):
        frame = av.AudioFrame.from_ndarray(mono[None, start:start + block], format="flt", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        collect(resampler.resample(frame))
    collect(resampler.resample(None))
    out = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
    expected = round(len(mono) * SAMPLE_RATE / rate)
    return np.ascontiguousarray(out[:expected]) if len(out) >= expected else np.pad(out, (0, expected - len(out)))


def _decode_bytes(data: bytes, label: str, max_duration_s: float | None) -> tuple[np.ndarray, int]:
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
        decoded = 0
        try:
            for frame in container.decode(stream):
                rate = frame.sample_rate
                if rate and rate < MIN_SOURCE_RATE:
                    raise AudioDecodeError(f"{label}: the sample rate {rate} Hz is below the supported minimum of "
                                           f"{MIN_SOURCE_RATE} Hz")
                chunks.append(_frame_to_planar_float(frame))
                decoded += frame.samples
                if max_duration_s is not None and rate and decoded > max_duration_s * rate:
                    raise AudioTooLongError(f"{label}: the audio is longer than the limit of "
                                            f"{_duration(max_duration_s)}; split it or send a shorter file")
        except AudioDecodeError:
            raise
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
    _check_samples(samples, label)
    return samples, int(rate)


def _check_samples(samples: np.ndarray, label: str) -> None:
    """Refuse samples the feature extractor cannot turn into finite log-mel values."""
    if not np.isfinite(samples).all():
        raise AudioDecodeError(f"{label}: the decoded audio contains NaN or infinite samples")
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak > MAX_SAMPLE_MAGNITUDE:
        raise AudioDecodeError(f"{label}: sample values reach {peak:.3g}; audio samples must lie in [-1, 1] "
                               f"(at most {MAX_SAMPLE_MAGNITUDE:g} is accepted). Rescale the audio.")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"


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


def _validate_array(source: np.ndarray | torch.Tensor, max_duration_s: float | None = None) -> np.ndarray:
    array = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else np.asarray(source)
    if array.ndim != 1:
        raise AudioDecodeError(f"audio arrays must be 1-D 16 kHz mono samples, got shape {tuple(array.shape)}")
    if array.size == 0:
        raise AudioDecodeError("the audio array is empty")
    array = array.astype(np.float32, copy=False)
    _check_samples(array, "the audio array")
    if max_duration_s is not None and array.size > max_duration_s * SAMPLE_RATE:
        raise AudioTooLongError(f"the audio array is longer than the limit of {_duration(max_duration_s)}")
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
