"""Live audio: PCM16 chunks as a realtime client sends them, resampled to 16 kHz with torchaudio, and
server-side turn detection (speech started / stopped) with silero-vad over the stream."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

import numpy as np
import torch
import torchaudio.functional as AF

from vllm_whisper.audio.decode import SAMPLE_RATE
from vllm_whisper.audio.vad import FRAME_SAMPLES, speech_probabilities

SUPPORTED_RATES = (8000, 16000, 24000, 48000)
FRAME_MS = FRAME_SAMPLES * 1000 // SAMPLE_RATE  # 32 ms
VAD_CONTEXT_FRAMES = 16  # frames re-scored before new audio so the VAD's recurrent state has warmed up


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
    """Audio of the current turn at the client's rate, with a cached 16 kHz view.

    Resampling the whole turn (at most 30 s) with torchaudio costs milliseconds and has no seams at chunk
    boundaries, unlike resampling each 100 ms chunk on its own.
    """

    def __init__(self, rate: int):
        if rate not in SUPPORTED_RATES:
            raise LiveAudioError(f"sample rate {rate} is not supported; use one of {SUPPORTED_RATES}")
        self.rate = rate
        self._chunks: list[np.ndarray] = []
        self._samples = 0
        self._cache: np.ndarray | None = None

    def append(self, samples: np.ndarray) -> None:
        self._chunks.append(samples)
        self._samples += samples.size
        self._cache = None

    def clear(self) -> None:
        self._chunks, self._samples, self._cache = [], 0, None

    def drop_before(self, seconds: float) -> None:
        """Forget audio before `seconds` (from the buffer start): the part before a turn's speech."""
        keep_from = min(self._samples, int(seconds * self.rate))
        if keep_from <= 0:
            return
        whole = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        rest = whole[keep_from:]
        self._chunks, self._samples, self._cache = [rest], rest.size, None

    @property
    def seconds(self) -> float:
        return self._samples / self.rate

    def samples_16k(self) -> np.ndarray:
        if self._cache is None:
            whole = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
            if self.rate != SAMPLE_RATE and whole.size:
                whole = AF.resample(torch.from_numpy(whole), self.rate, SAMPLE_RATE).numpy()
            self._cache = np.ascontiguousarray(whole, dtype=np.float32)
        return self._cache


@dataclass(frozen=True)
class TurnEvent:
    kind: str  # "speech_started" or "speech_stopped"
    at_seconds: float  # on the stream's timeline (seconds since the detector started)


@dataclass
class TurnDetector:
    """Server VAD: speech starts after `min_speech_ms` above `threshold` (reported `prefix_padding_ms` earlier),
    and stops after `silence_duration_ms` below it."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    min_speech_ms: int = 64
    _tail: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # context frames + unscored
    _tail_scored: int = 0  # frames at the start of the tail already scored (kept as context)
    _frames_scored: int = 0
    _speaking: bool = False
    _run: int = 0  # consecutive frames on the other side of the threshold

    def feed(self, samples_16k: np.ndarray) -> list[TurnEvent]:
        """Add 16 kHz samples; return the turn boundaries found in the complete frames so far."""
        self._tail = np.concatenate([self._tail, samples_16k])
        tail_frames = self._tail.size // FRAME_SAMPLES
        new_frames = tail_frames - self._tail_scored
        if new_frames <= 0:
            return []
        probabilities = speech_probabilities(self._tail[: tail_frames * FRAME_SAMPLES])[self._tail_scored:]
        events = []
        for offset, probability in enumerate(probabilities):
            event = self._step(self._frames_scored + offset, float(probability))
            if event is not None:
                events.append(event)
        self._frames_scored += new_frames
        keep = min(VAD_CONTEXT_FRAMES, tail_frames)
        self._tail = self._tail[(tail_frames - keep) * FRAME_SAMPLES:]
        self._tail_scored = keep
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
