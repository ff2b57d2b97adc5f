"""Audio front end: decode to 16 kHz mono, then Whisper's log-mel features."""

from vllm_whisper.audio.decode import SAMPLE_RATE, AudioDecodeError, AudioSource, load_audio, resample_to_16k
from vllm_whisper.audio.features import (
    CHUNK_SECONDS,
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    log_mel_spectrogram,
    pad_or_trim_frames,
    window_features,
)

__all__ = [
    "SAMPLE_RATE", "AudioDecodeError", "AudioSource", "load_audio", "resample_to_16k", "CHUNK_SECONDS",
    "HOP_LENGTH", "N_FRAMES", "N_SAMPLES", "log_mel_spectrogram", "pad_or_trim_frames", "window_features",
]
