"""What a speech-to-text model must offer so the engine, transcription pipeline and server can use it.

A second ASR model plugs in by implementing SupportsTranscription and registering its architecture name in
model_executor.registry; callers never branch on the concrete class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Mapping

if TYPE_CHECKING:
    from vllm_whisper.tokenizer import WhisperTokenizer


@dataclass(frozen=True)
class AudioConfig:
    """How audio must be cut and featurised for the model."""

    sample_rate: int = 16000
    n_mels: int = 80
    chunk_seconds: int = 30
    hop_length: int = 160
    encoder_frames: int = 1500

    @property
    def window_samples(self) -> int:
        return self.sample_rate * self.chunk_seconds

    @property
    def window_frames(self) -> int:
        return self.window_samples // self.hop_length


class SupportsTranscription(ABC):
    """Interface for encoder-decoder speech models served through /v1/audio/*."""

    # True when the model cannot serve plain text generation (Whisper needs audio for every request).
    supports_transcription_only: ClassVar[bool] = True
    # Set by the loader: the vocabulary the checkpoint was trained with.
    tokenizer: "WhisperTokenizer"

    @property
    def supported_languages(self) -> Mapping[str, str]:
        """ISO code -> language name for the languages this checkpoint can transcribe."""
        return self.tokenizer.supported_languages

    @property
    def can_translate(self) -> bool:
        return self.tokenizer.is_multilingual

    def get_decoder_prompt(
        self, language: str | None, task: str, timestamps: bool, previous_tokens: list[int] | None = None,
        hotword_tokens: list[int] | None = None,
    ) -> list[int]:
        """Decoder prompt for a task: optional <|startofprev|> context, then the start-of-transcript sequence.

        The context is the hotwords (faster-whisper's place for them) followed by the latest previous text; together
        they keep to half the decoder (hotwords first), so the other half stays free for the window's output."""
        max_context = self.max_decoder_tokens // 2 - 1
        hotwords = list(hotword_tokens or [])[:max_context]
        room = max_context - len(hotwords)
        previous = list(previous_tokens or [])[-room:] if room > 0 else []
        prompt: list[int] = []
        if hotwords or previous:
            prompt = [self.tokenizer.special.sot_prev, *hotwords, *previous]
        return prompt + self.tokenizer.sot_sequence(language, task, timestamps)

    @property
    def max_decoder_tokens(self) -> int:
        return 448

    @abstractmethod
    def get_audio_config(self) -> AudioConfig:
        """Sample rate, mel bins and window length the model was trained with."""
