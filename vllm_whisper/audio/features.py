"""Whisper's log-mel front end: 25 ms Hann STFT every 10 ms, Slaney mel filters, log10, 8 dB floor, rescale.

Matches the reference (openai-whisper) and transformers' WhisperFeatureExtractor; tests hold it to 1e-3.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torchaudio.functional as AF

from vllm_whisper.audio.decode import SAMPLE_RATE, AudioDecodeError

N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples per window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100


@lru_cache(maxsize=8)
def mel_filters(n_mels: int, device: str = "cpu") -> torch.Tensor:
    """(n_mels, 201) Slaney-normalised mel filterbank, as librosa builds it for Whisper."""
    if n_mels not in (80, 128):
        raise ValueError(f"Whisper uses 80 or 128 mel bins, not {n_mels}")
    fbanks = AF.melscale_fbanks(
        n_freqs=N_FFT // 2 + 1, f_min=0.0, f_max=SAMPLE_RATE / 2, n_mels=n_mels,
        sample_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney",
    )
    return fbanks.T.contiguous().to(device)


def log_mel_spectrogram(audio: np.ndarray | torch.Tensor, n_mels: int = 80, padding: int = 0) -> torch.Tensor:
    """(n_mels, n_frames) float32 features of 16 kHz audio, right-padded with `padding` zero samples first."""
    wave = torch.as_tensor(audio, dtype=torch.float32)
    if padding > 0:
        wave = torch.nn.functional.pad(wave, (0, padding))
    window = torch.hann_window(N_FFT, device=wave.device)
    stft = torch.stft(wave, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel = mel_filters(n_mels, str(wave.device)) @ magnitudes
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def pad_or_trim_frames(features: torch.Tensor, length: int = N_FRAMES) -> torch.Tensor:
    """Cut or zero-pad the last axis of (n_mels, frames) features to exactly `length` frames."""
    frames = features.shape[-1]
    if frames > length:
        return features[..., :length]
    if frames < length:
        return torch.nn.functional.pad(features, (0, length - frames))
    return features


def window_features(audio: np.ndarray, n_mels: int) -> torch.Tensor:
    """Features of one window of at most 30 s, padded to 3000 frames as the encoder expects."""
    if len(audio) > N_SAMPLES:
        raise ValueError(f"a window holds at most {N_SAMPLES} samples, got {len(audio)}")
    features = pad_or_trim_frames(log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES))
    if not torch.isfinite(features).all():
        raise AudioDecodeError("the audio's log-mel features are not finite (extreme sample values); rescale the "
                               "samples to [-1, 1]")
    return features
