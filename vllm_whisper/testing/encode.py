"""Encode PCM into real compressed files with PyAV (FFmpeg), so decoding is tested on every container we accept."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# extension -> (container format, codec, codec sample rate or None to keep the input rate)
FORMATS: dict[str, tuple[str, str, int | None]] = {
    "wav": ("wav", "pcm_s16le", None),
    "flac": ("flac", "flac", None),
    "mp3": ("mp3", "libmp3lame", None),
    "mpga": ("mp3", "libmp3lame", None),
    "ogg": ("ogg", "libopus", 48000),
    "oga": ("ogg", "libopus", 48000),
    "m4a": ("ipod", "aac", None),
    "mp4": ("mp4", "aac", None),
    "webm": ("webm", "libopus", 48000),
    "mpeg": ("mpeg", "mp2", None),
}


def encode_audio(samples: np.ndarray, rate: int, path: Path, extension: str | None = None) -> Path:
    """Write float32 samples, shaped (n,) or (channels, n), into `path` in the format its extension names."""
    import av

    path = Path(path)
    extension = extension or path.suffix.lstrip(".")
    container_format, codec, codec_rate = FORMATS[extension]
    planar = np.atleast_2d(np.asarray(samples, dtype=np.float32))
    layout = "mono" if planar.shape[0] == 1 else "stereo"
    out_rate = codec_rate or rate
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=out_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar), format="fltp", layout=layout)
        frame.sample_rate = rate
        resampler = av.AudioResampler(
            format=stream.codec_context.format, layout=layout, rate=out_rate,
            frame_size=stream.codec_context.frame_size or None,
        )
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))
    return path
