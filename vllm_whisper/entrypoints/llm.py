"""The offline API: `LLM(model="tiny.en").transcribe(items)` for paths, bytes, file objects or 16 kHz arrays."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from vllm_whisper.audio.decode import AudioSource, load_audio
from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.model_executor.loader import LoadedModel, load_model
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.transcribe.batch import transcribe_batch
from vllm_whisper.transcribe.result import TranscriptionResult

DEFAULT_MODEL = "tiny.en"


class LLM:
    """Load a Whisper model once and transcribe or translate many inputs with it on the batched engine."""

    def __init__(self, model: str = DEFAULT_MODEL, dtype: str = "auto", device: str = "cpu",
                 engine_config: EngineConfig | None = None, quantization: str | None = None):
        self.loaded: LoadedModel = load_model(model, dtype=dtype, device=device, quantization=quantization)
        self.engine = LLMEngine(self.loaded, engine_config)

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def transcribe(
        self,
        items: AudioSource | Sequence[AudioSource],
        params: TranscriptionParams | None = None,
        **options,
    ) -> list[TranscriptionResult]:
        """Transcribe all items together (their windows share engine steps); `options` (language=, task=,
        timestamps=, ...) build TranscriptionParams."""
        if params is not None and options:
            raise ValueError("pass either params or keyword options, not both")
        params = params or TranscriptionParams(**options)
        audios = [load_audio(item) for item in _as_list(items)]
        return transcribe_batch(self.engine, audios, params)

    def translate(self, items: AudioSource | Sequence[AudioSource], **options) -> list[TranscriptionResult]:
        """Translate speech in any supported language to English text."""
        return self.transcribe(items, task="translate", **options)


def _as_list(items) -> list:
    if isinstance(items, (str, bytes, bytearray, memoryview, np.ndarray, torch.Tensor)) or hasattr(items, "read") or hasattr(items, "__fspath__"):
        return [items]
    if isinstance(items, Iterable):
        return list(items)
    return [items]
