"""Voice activity detection on real synthesised speech: span boundaries, noise rejection, the time map, threads."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from vllm_whisper.audio.decode import SAMPLE_RATE, load_audio
from vllm_whisper.audio.vad import (
    SpeechSpan,
    TimeMap,
    collect_speech,
    detect_speech,
    speech_probabilities,
    vad_backend,
)
from vllm_whisper.testing.speech import HARVARD_SENTENCES, synthesize

GAP_S = 1.5
EDGE_S = 2.0
TOLERANCE_S = 0.3


def _speech_extent(clip: np.ndarray) -> tuple[int, int]:
    """[first, last + 1) of the samples that are audibly non-silent."""
    loud = np.flatnonzero(np.abs(clip) > 1e-3)
    return int(loud[0]), int(loud[-1]) + 1


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)


def _pink_noise(n: int, amplitude: float, seed: int) -> np.ndarray:
    """1/f noise shaped in the frequency domain, scaled to the given peak."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n)
    return (noise / np.abs(noise).max() * amplitude).astype(np.float32)


@pytest.fixture(scope="module")
def three_sentences(speech_dir: Path) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """2 s silence, three sentences separated by 1.5 s silences, 2 s silence; and each sentence's true extent."""
    parts, truth, position = [_silence(EDGE_S)], [], int(EDGE_S * SAMPLE_RATE)
    for i, text in enumerate(HARVARD_SENTENCES[:3]):
        clip = load_audio(synthesize(text, speech_dir / f"vad{i}.wav", "flite", "slt").path)
        first, last = _speech_extent(clip)
        truth.append((position + first, position + last))
        parts.append(clip)
        position += clip.size
        gap = _silence(GAP_S if i < 2 else EDGE_S)
        parts.append(gap)
        position += gap.size
    return np.concatenate(parts), truth


def test_finds_three_sentences_within_tolerance(three_sentences):
    audio, truth = three_sentences
    spans = detect_speech(audio, threshold=0.5, min_silence_ms=500)
    assert len(spans) == 3, spans
    for span, (start, end) in zip(spans, truth):
        assert abs(span.start_s - start / SAMPLE_RATE) <= TOLERANCE_S, (span, start / SAMPLE_RATE)
        assert abs(span.end_s - end / SAMPLE_RATE) <= TOLERANCE_S, (span, end / SAMPLE_RATE)
        assert span.duration_s == pytest.approx(span.end_s - span.start_s)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))


def test_long_min_silence_merges_sentences(three_sentences):
    audio, truth = three_sentences
    spans = detect_speech(audio, min_silence_ms=int(GAP_S * 1000) + 500)
    assert len(spans) == 1
    assert spans[0].start <= truth[0][0] and spans[0].end >= truth[-1][1]


def test_max_speech_splits_long_span(three_sentences):
    audio, _ = three_sentences
    spans = detect_speech(audio, min_silence_ms=3000, max_speech_s=4.0)
    assert len(spans) >= 2
    assert all(s.duration_s <= 4.0 for s in spans)


@pytest.mark.parametrize("kind", ["white", "pink"])
def test_noise_alone_is_not_speech(kind):
    n = 10 * SAMPLE_RATE
    if kind == "white":
        noise = (0.05 * np.random.default_rng(0).standard_normal(n)).astype(np.float32)
    else:
        noise = _pink_noise(n, 0.05, seed=1)
    assert detect_speech(noise, threshold=0.5) == []


def test_silence_and_empty_audio_have_no_speech():
    assert detect_speech(np.zeros(5 * SAMPLE_RATE, dtype=np.float32)) == []
    assert detect_speech(np.zeros(0, dtype=np.float32)) == []
    assert speech_probabilities(np.zeros(0, dtype=np.float32)).shape == (0,)


def test_float64_input_is_accepted(three_sentences):
    audio, _ = three_sentences
    assert detect_speech(audio.astype(np.float64)) == detect_speech(audio)


def test_time_map_restores_original_samples_and_times(three_sentences):
    audio, _ = three_sentences
    spans = detect_speech(audio)
    speech, time_map = collect_speech(audio, spans)
    assert speech.size == time_map.num_samples == sum(s.num_samples for s in spans)
    # Every kept sample maps back to the very sample it came from.
    originals = np.array([time_map.to_original_sample(i) for i in range(speech.size)])
    np.testing.assert_array_equal(audio[originals], speech)
    # Seconds: piecewise shift by span, inverse of to_filtered.
    for i in range(0, speech.size, 997):
        assert time_map.to_original(i / SAMPLE_RATE) == pytest.approx(originals[i] / SAMPLE_RATE, abs=1e-9)
    for span in spans:
        for t in np.linspace(span.start_s, span.end_s, 7)[:-1]:
            assert time_map.to_original(time_map.to_filtered(t)) == pytest.approx(t, abs=1e-9)


def test_time_map_junctions_and_clamping():
    spans = (SpeechSpan(16000, 32000), SpeechSpan(48000, 64000))
    time_map = TimeMap(spans)
    assert time_map.offsets == (0, 16000)
    assert time_map.duration_s == 2.0
    assert time_map.to_original(0.0) == 1.0
    assert time_map.to_original(1.0) == 3.0  # a start at the junction: the second span's start
    assert time_map.to_original(1.0, is_end=True) == 2.0  # an end at the junction: the first span's end
    assert time_map.to_original(0.5) == 1.5 and time_map.to_original(1.5) == 3.5
    assert time_map.to_original(-1.0) == 1.0 and time_map.to_original(9.0) == 4.0
    assert time_map.to_filtered(2.5) == 1.0  # inside the removed gap: where the next span starts
    assert time_map.to_filtered(0.0) == 0.0


def test_no_spans_gives_empty_audio():
    speech, time_map = collect_speech(np.ones(16000, dtype=np.float32) * 0.1, [])
    assert speech.shape == (0,) and speech.dtype == np.float32
    assert time_map.num_samples == 0 and time_map.to_original(3.0) == 0.0


def test_concurrent_callers_match_sequential(three_sentences):
    audio, _ = three_sentences
    rng = np.random.default_rng(5)
    inputs = [audio, audio[::-1].copy(), audio + (0.01 * rng.standard_normal(audio.size)).astype(np.float32),
              np.concatenate([audio[SAMPLE_RATE * 3:], audio[: SAMPLE_RATE * 3]])]
    sequential = [detect_speech(x) for x in inputs]
    sequential_probs = [speech_probabilities(x) for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(2):
            assert list(pool.map(detect_speech, inputs)) == sequential
            for got, want in zip(pool.map(speech_probabilities, inputs), sequential_probs):
                np.testing.assert_array_equal(got, want)


def test_jit_model_agrees_with_onnx(three_sentences):
    """The TorchScript fallback (used without onnxruntime) scores frames like the ONNX model."""
    from vllm_whisper.audio import vad

    audio = three_sentences[0][: 6 * SAMPLE_RATE]
    if vad_backend() != "onnx":
        pytest.skip("onnxruntime is not installed")
    jit = vad._JitVad(vad._import_silero().load_silero_vad(onnx=False))
    expected = speech_probabilities(audio)
    np.testing.assert_allclose(jit.probabilities(vad._model_inputs(audio))[0], expected, atol=1e-4)


def test_streamed_scores_equal_scoring_the_whole_stream(three_sentences):
    """The realtime detector's scorer, fed uneven pieces (a 100 ms append is 1600 samples), gives every complete
    frame the probability scoring the whole audio at once gives it: no frame is scored twice or with a cold state."""
    from vllm_whisper.audio.vad import FRAME_SAMPLES, StreamingSpeechProbabilities

    audio = three_sentences[0][: 4 * SAMPLE_RATE]
    audio = audio[: audio.size // FRAME_SAMPLES * FRAME_SAMPLES]
    scorer = StreamingSpeechProbabilities()
    cuts = [0, 100, 1600, 1700, 5000, 5012, 9000, audio.size]
    streamed = np.concatenate([scorer.feed(audio[a:b]) for a, b in zip(cuts, cuts[1:])])
    np.testing.assert_allclose(streamed, speech_probabilities(audio), atol=1e-5)


def test_loading_keeps_torch_thread_count():
    """silero_vad sets torch.set_num_threads(1) on import; loading through vad.py must undo that."""
    code = ("import numpy as np, torch; torch.set_num_threads(2); "
            "from vllm_whisper.audio.vad import detect_speech; detect_speech(np.zeros(16000, np.float32)); "
            "print(torch.get_num_threads())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"


@pytest.mark.parametrize(
    ("audio", "kwargs", "message"),
    [
        (np.zeros((2, 16000), np.float32), {}, "mono"),
        (np.zeros(16000, np.int16), {}, "32768"),
        (np.zeros(8000, np.float32), {"sample_rate": 8000}, "resample_to_16k"),
        (np.full(16000, np.nan, np.float32), {}, "NaN"),
        (np.zeros(16000, np.float32), {"threshold": 1.5}, "between 0 and 1"),
        (np.zeros(16000, np.float32), {"min_silence_ms": -1}, "negative"),
        ([0.0] * 16000, {}, "numpy array"),
    ],
)
def test_bad_input_raises_actionable_error(audio, kwargs, message):
    with pytest.raises(ValueError, match=message):
        detect_speech(audio, **kwargs)


def test_collect_speech_rejects_bad_spans():
    audio = np.zeros(16000, np.float32)
    with pytest.raises(ValueError, match="outside"):
        collect_speech(audio, [SpeechSpan(0, 20000)])
    with pytest.raises(ValueError, match="non-overlapping"):
        collect_speech(audio, [SpeechSpan(0, 8000), SpeechSpan(4000, 9000)])
