"""Audio front end: every container decodes, any rate/channel count resamples, bad input is one clear error,
and log-mel features equal transformers' WhisperFeatureExtractor."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from vllm_whisper.audio import AudioDecodeError, load_audio, log_mel_spectrogram, window_features
from vllm_whisper.testing.encode import FORMATS, encode_audio


def tone(rate: int, seconds: float, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    left = 0.4 * np.sin(2 * np.pi * freq * t)
    if channels == 1:
        return left.astype(np.float32)
    right = 0.4 * np.sin(2 * np.pi * freq * 1.5 * t)
    return np.stack([left, right]).astype(np.float32)


def dominant_frequency(samples: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("extension", sorted(FORMATS))
def test_every_format_decodes_to_16k_mono(extension, tmp_path):
    path = encode_audio(tone(44100, 1.5, channels=2), 44100, tmp_path / f"clip.{extension}")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 24000) < 2400  # codecs add a little priming/padding
    assert 0.1 < np.sqrt(np.mean(audio**2)) < 0.5
    assert abs(dominant_frequency(audio) - 440) < 10 or abs(dominant_frequency(audio) - 660) < 10


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_stereo_inputs_resample(rate, tmp_path):
    path = encode_audio(tone(rate, 2.0, freq=1000, channels=2), rate, tmp_path / "stereo.wav")
    audio = load_audio(path)
    assert len(audio) == 32000
    peak = dominant_frequency(audio)
    assert abs(peak - 1000) < 5 or abs(peak - 1500) < 5
    # Downmix averages channels: both tones are present at about half amplitude.
    spectrum = np.abs(np.fft.rfft(audio))
    freqs = np.fft.rfftfreq(len(audio), 1 / 16000)
    assert spectrum[np.argmin(abs(freqs - 1000))] > 0.2 * spectrum.max()
    assert spectrum[np.argmin(abs(freqs - 1500))] > 0.2 * spectrum.max()


def test_paths_bytes_file_objects_and_arrays_agree(tmp_path):
    path = encode_audio(tone(16000, 1.0), 16000, tmp_path / "a.flac")
    from_path = load_audio(path)
    assert np.array_equal(load_audio(str(path)), from_path)
    assert np.array_equal(load_audio(path.read_bytes()), from_path)
    with open(path, "rb") as fh:
        assert np.array_equal(load_audio(fh), from_path)
    assert np.array_equal(load_audio(io.BytesIO(path.read_bytes())), from_path)
    assert np.array_equal(load_audio(torch.from_numpy(from_path)), from_path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: b"", "empty"),
        (lambda p: b"this is plainly not audio, just some text bytes" * 20, "not a readable audio file"),
        (lambda p: np.random.default_rng(0).bytes(5000), "not a readable audio file|corrupt|no audio"),
        (lambda p: p.read_bytes()[:30], "not a readable audio file|corrupt|no audio"),
        (lambda p: p.read_bytes()[:44], "no audio samples|not a readable|corrupt"),
    ],
    ids=["empty", "text", "random-bytes", "truncated-header", "header-only"],
)
def test_bad_inputs_raise_audio_decode_error(make, message, tmp_path):
    good = encode_audio(tone(16000, 1.0), 16000, tmp_path / "good.wav")
    with pytest.raises(AudioDecodeError, match=message):
        load_audio(make(good))


def test_missing_file_and_bad_arrays(tmp_path):
    with pytest.raises(AudioDecodeError, match="no such audio file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioDecodeError, match="1-D"):
        load_audio(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(AudioDecodeError, match="empty"):
        load_audio(np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioDecodeError, match="NaN"):
        load_audio(np.array([0.0, np.nan], dtype=np.float32))


def test_video_without_audio_stream_is_rejected(tmp_path):
    import av

    path = tmp_path / "silent_video.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        load_audio(path)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_transformers(n_mels, fox_clip):
    from transformers import WhisperFeatureExtractor

    audio = load_audio(fox_clip.path)
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    theirs = extractor(audio, sampling_rate=16000, return_tensors="np").input_features[0]
    ours = window_features(audio, n_mels).numpy()
    assert ours.shape == theirs.shape == (n_mels, 3000)
    assert np.abs(ours - theirs).max() < 1e-3


def test_log_mel_of_noise_matches_transformers():
    from transformers import WhisperFeatureExtractor

    audio = np.random.default_rng(1).normal(0, 0.1, 16000 * 7).astype(np.float32)
    theirs = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000, return_tensors="np").input_features[0]
    assert np.abs(window_features(audio, 80).numpy() - theirs).max() < 1e-3
    assert log_mel_spectrogram(audio, 80).shape == (80, 700)
