"""Voice activity detection with the silero-vad model bundled in the `silero-vad` pip package (no download).

The model is loaded once per process. It is a small LSTM run on 32 ms frames; its recurrent state lives in
local variables of each call (the model itself is driven statelessly), so any number of threads can share the
one loaded copy without locks and without mixing their streams. ONNX Runtime is used when it is installed
(about 2x faster than TorchScript on a CPU), else the package's TorchScript model.

`detect_speech` finds speech spans; `collect_speech` keeps only those samples and returns a `TimeMap` that
maps times in the shortened audio back to the original file's timeline.
"""

from __future__ import annotations

import itertools
import math
import threading
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol, Sequence

import numpy as np
import torch

from vllm_whisper.audio.decode import SAMPLE_RATE
from vllm_whisper.audio.spans import SampleSpan

FRAME_SAMPLES = 512  # the 16 kHz model scores 32 ms frames
CONTEXT_SAMPLES = 64  # ...each preceded by the last 4 ms of the previous frame
STATE_SHAPE = (2, 1, 128)  # the LSTM's (h, c) state for a batch of one


@dataclass(frozen=True)
class SpeechSpan(SampleSpan):
    """A stretch of speech, [start, end) in samples at 16 kHz."""


# ---------------------------------------------------------------------------------------------------- the model


class _VadModel(Protocol):
    backend: str

    def probabilities(self, inputs: np.ndarray, state=None) -> tuple[np.ndarray, object]:
        """Speech probability of each row of (frames, CONTEXT_SAMPLES + FRAME_SAMPLES) model inputs, in order,
        starting from the recurrent `state` a previous call returned (None: a fresh one); returns the state after."""


class _OnnxVad:
    """The bundled ONNX model; InferenceSession.run is thread-safe and the state is passed in and out."""

    backend = "onnx"

    def __init__(self, session) -> None:
        self._session = session
        self._rate = np.array(SAMPLE_RATE, dtype=np.int64)

    def probabilities(self, inputs: np.ndarray, state=None) -> tuple[np.ndarray, object]:
        state = np.zeros(STATE_SHAPE, dtype=np.float32) if state is None else state
        probs = np.empty(len(inputs), dtype=np.float32)
        run = self._session.run
        for i in range(len(inputs)):
            out, state = run(None, {"input": inputs[i : i + 1], "state": state, "sr": self._rate})
            probs[i] = out[0, 0]
        return probs, state


class _JitVad:
    """The bundled TorchScript model, driven through its stateless 16 kHz core (`_model(x, state)`)."""

    backend = "jit"

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        if not hasattr(module, "_model"):
            raise RuntimeError("this silero-vad version's TorchScript model has no _model core; install "
                               "onnxruntime (pip install onnxruntime) so the ONNX model is used instead")
        self._core = module._model

    def probabilities(self, inputs: np.ndarray, state=None) -> tuple[np.ndarray, object]:
        state = torch.zeros(STATE_SHAPE) if state is None else state
        frames = torch.from_numpy(inputs)
        probs = np.empty(len(inputs), dtype=np.float32)
        with torch.inference_mode():
            for i in range(len(inputs)):
                out, state = self._core(frames[i : i + 1], state)
                probs[i] = float(out[0, 0])
        return probs, state


_MODEL: _VadModel | None = None
_MODEL_LOCK = threading.Lock()


def _get_model() -> _VadModel:
    """The process-wide model, loaded on first use (double-checked under a lock)."""
    global _MODEL
    if _MODEL is None:
        with _MODEL_LOCK:
            if _MODEL is None:
                _MODEL = _load_model()
    return _MODEL


def _load_model() -> _VadModel:
    """Load the model file shipped inside the silero-vad package: ONNX if onnxruntime is importable, else JIT."""
    silero = _import_silero()
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return _JitVad(silero.load_silero_vad(onnx=False))
    return _OnnxVad(silero.load_silero_vad(onnx=True).session)


def _import_silero():
    """The silero_vad package, imported without keeping the torch.set_num_threads(1) its import performs."""
    threads = torch.get_num_threads()
    try:
        import silero_vad
    except ImportError as exc:
        raise RuntimeError("voice activity detection needs the silero-vad package: pip install silero-vad") from exc
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return silero_vad


def vad_backend() -> str:
    """Which runtime scores frames: "onnx" or "jit" (loads the model if needed)."""
    return _get_model().backend


# ---------------------------------------------------------------------------------------------------- detection


def validate_audio(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Return `audio` as contiguous 1-D float32, or raise ValueError saying how to fix it."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(
            f"audio must be 16000 Hz, got {sample_rate} Hz: resample it with vllm_whisper.audio.resample_to_16k "
            f"(or load it with vllm_whisper.audio.load_audio)"
        )
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"audio must be a numpy array of samples, got {type(audio).__name__}")
    if audio.ndim != 1:
        raise ValueError(
            f"audio must be mono (1-D), got shape {audio.shape}: average the channels first, e.g. "
            f"audio.mean(axis=0) for (channels, samples)"
        )
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(
            f"audio must be float samples in [-1, 1], got dtype {audio.dtype}: for 16-bit PCM use "
            f"audio.astype(np.float32) / 32768"
        )
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise ValueError("audio contains NaN or infinite samples; clean or re-decode the input")
    return audio


def speech_probabilities(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speech probability of each 32 ms frame (512 samples; the last frame zero-padded), from silero-vad."""
    audio = validate_audio(audio, sample_rate)
    if audio.size == 0:
        return np.zeros(0, dtype=np.float32)
    return _get_model().probabilities(_model_inputs(audio))[0]


class StreamingSpeechProbabilities:
    """speech_probabilities over a stream fed in pieces: each complete 32 ms frame is scored once, carrying the
    model's recurrent state and the previous frame's last samples, so the probabilities equal scoring the whole
    stream at once (tested) while a piece costs time proportional to its length, not to any re-scored context."""

    def __init__(self) -> None:
        self._model = _get_model()
        self._state = None
        self._pending = np.zeros(0, dtype=np.float32)  # samples of the incomplete last frame
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)  # the last scored frame's last samples

    def feed(self, audio: np.ndarray) -> np.ndarray:
        """Probabilities of the frames the new 16 kHz samples complete (possibly none)."""
        audio = np.concatenate([self._pending, validate_audio(audio)])
        n_frames = audio.size // FRAME_SAMPLES
        self._pending = audio[n_frames * FRAME_SAMPLES:]
        if n_frames == 0:
            return np.zeros(0, dtype=np.float32)
        frames = audio[: n_frames * FRAME_SAMPLES].reshape(n_frames, FRAME_SAMPLES)
        context = np.concatenate([self._context[None], frames[:-1, -CONTEXT_SAMPLES:]], axis=0)
        self._context = frames[-1, -CONTEXT_SAMPLES:].copy()
        probs, self._state = self._model.probabilities(np.ascontiguousarray(np.concatenate([context, frames], 1)),
                                                       self._state)
        return probs


def _model_inputs(audio: np.ndarray) -> np.ndarray:
    """(frames, 576) rows: each 512-sample frame preceded by the last 64 samples of the frame before (zeros first)."""
    n_frames = math.ceil(audio.size / FRAME_SAMPLES)
    frames = np.zeros((n_frames, FRAME_SAMPLES), dtype=np.float32)
    frames.reshape(-1)[: audio.size] = audio
    context = np.zeros((n_frames, CONTEXT_SAMPLES), dtype=np.float32)
    context[1:] = frames[:-1, -CONTEXT_SAMPLES:]
    return np.ascontiguousarray(np.concatenate([context, frames], axis=1))


def detect_speech(
    audio: np.ndarray,
    threshold: float = 0.5,
    min_silence_ms: int = 500,
    min_speech_ms: int = 250,
    speech_pad_ms: int = 200,
    max_speech_s: float = math.inf,
    sample_rate: int = SAMPLE_RATE,
) -> list[SpeechSpan]:
    """Sorted, non-overlapping speech spans of 16 kHz mono float audio (silero-vad's own span rules).

    threshold: frames with a speech probability at or above it start speech; speech ends below threshold - 0.15.
    min_silence_ms: shorter pauses do not split a span. min_speech_ms: shorter spans are dropped.
    speech_pad_ms: widen each span by this much on both sides (halving the gap where neighbours would overlap).
    max_speech_s: split longer spans at their longest internal pause (or hard, if they have none).
    """
    _check_detection_args(threshold, min_silence_ms, min_speech_ms, speech_pad_ms, max_speech_s)
    probs = speech_probabilities(audio, sample_rate)
    if probs.size == 0:
        return []
    return spans_from_probabilities(
        probs, len(audio), threshold, min_silence_ms, min_speech_ms, speech_pad_ms, max_speech_s
    )


def spans_from_probabilities(
    probs: np.ndarray,
    num_samples: int,
    threshold: float = 0.5,
    min_silence_ms: int = 500,
    min_speech_ms: int = 250,
    speech_pad_ms: int = 200,
    max_speech_s: float = math.inf,
) -> list[SpeechSpan]:
    """Turn per-frame probabilities into spans with silero-vad's reference state machine (cheap; no model)."""
    raw = _import_silero().get_speech_timestamps_from_probs(
        [float(p) for p in probs],
        sampling_rate=SAMPLE_RATE,
        threshold=threshold,
        min_speech_duration_ms=min_speech_ms,
        max_speech_duration_s=max_speech_s,
        min_silence_duration_ms=min_silence_ms,
        speech_pad_ms=speech_pad_ms,
        audio_length_samples=num_samples,
    )
    spans = [SpeechSpan(int(r["start"]), min(int(r["end"]), num_samples)) for r in raw]
    return [s for s in spans if s.end > s.start]


def _check_detection_args(
    threshold: float, min_silence_ms: int, min_speech_ms: int, speech_pad_ms: int, max_speech_s: float
) -> None:
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold is a speech probability and must be between 0 and 1, got {threshold}")
    for name, value in (("min_silence_ms", min_silence_ms), ("min_speech_ms", min_speech_ms),
                        ("speech_pad_ms", speech_pad_ms)):
        if value < 0:
            raise ValueError(f"{name} cannot be negative, got {value}")
    if not max_speech_s > 2 * speech_pad_ms / 1000 + FRAME_SAMPLES / SAMPLE_RATE:
        raise ValueError(
            f"max_speech_s={max_speech_s} leaves no room for speech after padding; use a value above "
            f"{2 * speech_pad_ms / 1000 + FRAME_SAMPLES / SAMPLE_RATE:.3f} s (or math.inf for no limit)"
        )


# ---------------------------------------------------------------------------------------------------- time map


@dataclass(frozen=True)
class TimeMap:
    """Maps positions in speech-only audio (the spans laid end to end) back to the original audio."""

    spans: tuple[SpeechSpan, ...]

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Where each span starts in the speech-only audio, in samples."""
        return tuple(itertools.accumulate((s.num_samples for s in self.spans[:-1]), initial=0)) if self.spans else ()

    @cached_property
    def num_samples(self) -> int:
        """Length of the speech-only audio in samples."""
        return sum(s.num_samples for s in self.spans)

    @property
    def duration_s(self) -> float:
        return self.num_samples / SAMPLE_RATE

    def to_original_sample(self, index: int) -> int:
        """Original sample index of sample `index` of the speech-only audio (exact)."""
        if not 0 <= index < self.num_samples:
            raise ValueError(f"sample {index} is outside the speech-only audio of {self.num_samples} samples")
        k = bisect_right(self.offsets, index) - 1
        return self.spans[k].start + (index - self.offsets[k])

    def to_original(self, seconds: float, is_end: bool = False) -> float:
        """Original time of a time in the speech-only audio; times past either end are clamped into it.

        A time exactly at the junction of two spans maps to the later span's start, or with is_end=True (for a
        segment's or word's end) to the earlier span's end.
        """
        if not self.spans:
            return 0.0
        position = min(max(seconds * SAMPLE_RATE, 0.0), float(self.num_samples))
        offsets = self.offsets
        k = (bisect_left(offsets, position) if is_end else bisect_right(offsets, position)) - 1
        k = min(max(k, 0), len(self.spans) - 1)
        return (self.spans[k].start + (position - offsets[k])) / SAMPLE_RATE

    def to_filtered(self, seconds: float) -> float:
        """Time in the speech-only audio of an original time; a time in a removed gap maps to the next span."""
        if not self.spans:
            return 0.0
        position = seconds * SAMPLE_RATE
        starts = [s.start for s in self.spans]
        k = bisect_right(starts, position) - 1
        if k < 0:
            return 0.0
        span, offset = self.spans[k], self.offsets[k]
        return (offset + min(position - span.start, float(span.num_samples))) / SAMPLE_RATE


def collect_speech(audio: np.ndarray, spans: Sequence[SpeechSpan]) -> tuple[np.ndarray, TimeMap]:
    """The samples inside `spans` laid end to end, and the TimeMap back to `audio`; no spans gives empty audio."""
    audio = validate_audio(audio)
    spans = tuple(spans)
    check_spans(spans, audio.size)
    if not spans:
        return np.zeros(0, dtype=np.float32), TimeMap(())
    return np.concatenate([audio[s.start : s.end] for s in spans]), TimeMap(spans)


def check_spans(spans: Sequence[SpeechSpan], num_samples: int) -> None:
    """Raise ValueError unless the spans are non-empty, sorted, non-overlapping and inside [0, num_samples]."""
    previous_end = 0
    for i, span in enumerate(spans):
        if not 0 <= span.start < span.end <= num_samples:
            raise ValueError(
                f"span {i} [{span.start}, {span.end}) is empty or outside the audio's {num_samples} samples; "
                f"pass spans from detect_speech on this same audio"
            )
        if span.start < previous_end:
            raise ValueError(f"span {i} starts at {span.start}, before the previous span ends ({previous_end}); "
                             f"spans must be sorted and non-overlapping")
        previous_end = span.end
