"""Live audio: PCM16 chunks as a realtime client sends them, resampled to 16 kHz with torchaudio, and
server-side turn detection (speech started / stopped) with silero-vad over the stream."""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torchaudio.transforms as T

from vllm_whisper.audio.decode import SAMPLE_RATE
from vllm_whisper.audio.vad import FRAME_SAMPLES, StreamingSpeechProbabilities

SUPPORTED_RATES = (8000, 16000, 24000, 48000)
FRAME_MS = FRAME_SAMPLES * 1000 // SAMPLE_RATE  # 32 ms
RESAMPLE_CONTEXT = 96  # input samples: more than torchaudio's sinc reaches at any supported rate (19 at 48 kHz)


class LiveAudioError(ValueError):
    """A chunk that is not base64 PCM16 at the session's rate."""


def decode_pcm16(chunk_base64: str) -> np.ndarray:
    """Base64 little-endian 16-bit mono PCM -> float32 samples in [-1, 1)."""
    try:
        raw = base64.b64decode(chunk_base64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise LiveAudioError(f"audio must be base64-encoded PCM16: {exc}") from exc
    if len(raw) % 2:
        raise LiveAudioError("PCM16 audio needs an even number of bytes")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


class LiveAudioBuffer:
    """Audio of the current turn at the client's rate, with a 16 kHz view kept up to date incrementally.

    Each append resamples only the new audio plus a little context before it (torchaudio's windowed sinc reaches
    about 20 input samples), starting on the resampler's phase grid, so the view equals resampling the whole turn
    at once (tested) while an append costs time proportional to the chunk, not to the turn.
    """

    def __init__(self, rate: int):
        if rate not in SUPPORTED_RATES:
            raise LiveAudioError(f"sample rate {rate} is not supported; use one of {SUPPORTED_RATES}")
        self.rate = rate
        common = math.gcd(rate, SAMPLE_RATE)
        self._in_step, self._out_step = rate // common, SAMPLE_RATE // common  # phase grid of the resampler
        self._resampler = T.Resample(rate, SAMPLE_RATE) if rate != SAMPLE_RATE else None  # kernel built once
        self._input = _Growable()
        self._output = _Growable()
        self._final_inputs = 0  # input samples whose 16 kHz outputs no later audio can change

    def append(self, samples: np.ndarray) -> None:
        self._input.extend(np.asarray(samples, dtype=np.float32))
        self._update_16k()

    def clear(self) -> None:
        self._input, self._output, self._final_inputs = _Growable(), _Growable(), 0

    def drop_before(self, seconds: float) -> None:
        """Forget audio before `seconds` (from the buffer start): the part before a turn's speech."""
        keep_from = min(len(self._input), int(seconds * self.rate))
        if keep_from <= 0:
            return
        rest = self._input.view()[keep_from:].copy()
        self.clear()
        self.append(rest)

    @property
    def seconds(self) -> float:
        return len(self._input) / self.rate

    def audio_after(self, seconds: float) -> np.ndarray:
        """A copy of the client-rate samples from `seconds` (from the buffer start) to the end."""
        return self._input.view()[max(0, int(round(seconds * self.rate))):].copy()

    def samples_16k(self) -> np.ndarray:
        """The turn at 16 kHz (a view: valid until the next append, clear or drop)."""
        return self._output.view()

    def _update_16k(self) -> None:
        whole = self._input.view()
        if self.rate == SAMPLE_RATE:
            self._output = self._input
            return
        # Recompute from a grid point at least RESAMPLE_CONTEXT inputs before the first output not yet final; the
        # outputs of that context are discarded (they saw zero padding where the earlier audio is).
        start = max(0, self._final_inputs - 2 * RESAMPLE_CONTEXT) // self._in_step * self._in_step
        keep_from = 0 if start == 0 else start + RESAMPLE_CONTEXT // self._in_step * self._in_step
        with torch.inference_mode():
            segment = self._resampler(torch.from_numpy(np.ascontiguousarray(whole[start:]))).numpy()
        first_out = keep_from // self._in_step * self._out_step
        skip = (keep_from - start) // self._in_step * self._out_step
        self._output.truncate(first_out)
        self._output.extend(segment[skip:])
        self._final_inputs = max(0, len(whole) - RESAMPLE_CONTEXT)


class _Growable:
    """A float32 array that grows by appending, with amortised doubling."""

    def __init__(self) -> None:
        self._data = np.zeros(0, np.float32)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def extend(self, values: np.ndarray) -> None:
        needed = self._size + values.size
        if needed > self._data.size:
            grown = np.zeros(max(needed, 2 * self._data.size, 4096), np.float32)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size:needed] = values
        self._size = needed

    def truncate(self, size: int) -> None:
        self._size = min(self._size, size)

    def view(self) -> np.ndarray:
        return self._data[: self._size]


@dataclass(frozen=True)
class TurnEvent:
    kind: str  # "speech_started" or "speech_stopped"
    at_seconds: float  # on the stream's timeline (seconds since the detector started)


@dataclass
class TurnDetector:
    """Server VAD: speech starts after `min_speech_ms` above `threshold` (reported `prefix_padding_ms` earlier),
    and stops after `silence_duration_ms` below it. Frames are scored as a stream (each once, the model's state
    carried), so a 100 ms append costs three frames of silero-vad, not a re-scored context as well."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    min_speech_ms: int = 64
    _scorer: StreamingSpeechProbabilities = field(default_factory=StreamingSpeechProbabilities)
    _frames_scored: int = 0
    _speaking: bool = False
    _run: int = 0  # consecutive frames on the other side of the threshold

    def feed(self, samples_16k: np.ndarray) -> list[TurnEvent]:
        """Add 16 kHz samples; return the turn boundaries found in the complete frames so far."""
        events = []
        for probability in self._scorer.feed(samples_16k):
            event = self._step(self._frames_scored, float(probability))
            self._frames_scored += 1
            if event is not None:
                events.append(event)
        return events

    def _step(self, frame: int, probability: float) -> TurnEvent | None:
        if not self._speaking:
            self._run = self._run + 1 if probability >= self.threshold else 0
            if self._run * FRAME_MS >= self.min_speech_ms:
                self._speaking, self._run = True, 0
                onset = (frame + 1) * FRAME_MS - self.min_speech_ms
                return TurnEvent("speech_started", max(0.0, (onset - self.prefix_padding_ms) / 1000))
            return None
        self._run = self._run + 1 if probability < self.threshold - 0.15 else 0
        if self._run * FRAME_MS >= self.silence_duration_ms:
            self._speaking, self._run = False, 0
            return TurnEvent("speech_stopped", (frame + 1) * FRAME_MS / 1000 - self.silence_duration_ms / 1000)
        return None

    @property
    def speaking(self) -> bool:
        return self._speaking
