"""The offline API: `LLM(model="tiny.en").transcribe(items)` for paths, bytes, file objects or 16 kHz arrays."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from vllm_whisper.audio.decode import AudioDecodeError, AudioSource, load_audio
from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.engine_args import DEFAULT_MODEL, EngineArgs
from vllm_whisper.model_executor.loader import LoadedModel
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.transcribe.batch import iter_batch, transcribe_batch
from vllm_whisper.transcribe.result import TranscriptionResult

__all__ = ["DEFAULT_MODEL", "LLM"]


class LLM:
    """Load a Whisper model once and transcribe or translate many inputs with it on the batched engine.

    Keyword arguments are EngineArgs fields (model=, dtype=, device=, quantization=, max_num_seqs=,
    max_model_len=, ...), with EngineArgs' defaults; engine_config= passes a ready EngineConfig instead of the
    engine fields, engine_args= a ready EngineArgs instead of all of them.
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, engine_config: EngineConfig | None = None,
                 engine_args: EngineArgs | None = None, **kwargs: Any):
        self.engine_args = _engine_args(model, engine_args, engine_config, kwargs)
        self.loaded: LoadedModel = self.engine_args.load_model()
        self.engine = LLMEngine(self.loaded, engine_config or self.engine_args.create_engine_config())

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
        params = self._params(params, options)
        audios = [load_audio(item) for item in _as_list(items)]
        return transcribe_batch(self.engine, audios, params)

    def transcribe_iter(
        self,
        items: AudioSource | Iterable[AudioSource],
        params: TranscriptionParams | None = None,
        *,
        max_files_in_flight: int | None = None,
        errors: str = "raise",
        **options,
    ) -> Iterator[tuple[int, TranscriptionResult | Exception]]:
        """Yield (index, result) for each input the moment it finishes, in completion order (index is the input's
        position), while the others keep decoding together in the same engine steps.

        Inputs are decoded lazily: at most max_files_in_flight (default: max_num_seqs) files are decoded and on
        the engine at once, so a generator of any number of inputs runs in bounded memory. errors="raise" raises
        an input's AudioDecodeError (or engine failure) when its turn comes; errors="yield" yields it as that
        input's (index, exception) and goes on with the others. Closing the iterator (or Ctrl-C) aborts the rest.
        """
        if errors not in ("raise", "yield"):
            raise ValueError(f"errors must be 'raise' or 'yield', got {errors!r}")
        params = self._params(params, options)  # checked now, not at the first next()
        limit = max_files_in_flight if max_files_in_flight is not None else self.engine.config.max_num_seqs
        if limit < 1:
            raise ValueError(f"max_files_in_flight must be at least 1, got {limit}")
        decoded = ((index, _decode_or_error(item), params) for index, item in enumerate(_as_iterable(items)))
        return _raising(iter_batch(self.engine, decoded, max_active_files=limit), errors == "raise")

    def _params(self, params: TranscriptionParams | None, options: dict) -> TranscriptionParams:
        """The given params, or TranscriptionParams built from keyword options with the engine's token budget."""
        if params is not None and options:
            raise ValueError("pass either params or keyword options, not both")
        if params is None:
            options.setdefault("max_new_tokens", self.engine.config.default_max_new_tokens)
            params = TranscriptionParams(**options)
        return params

    def translate(self, items: AudioSource | Sequence[AudioSource], **options) -> list[TranscriptionResult]:
        """Translate speech in any supported language to English text."""
        return self.transcribe(items, task="translate", **options)


_LOADING_FIELDS = ("model", "served_model_name", "dtype", "quantization", "device")


def _engine_args(model: str, engine_args: EngineArgs | None, engine_config: EngineConfig | None,
                 kwargs: dict[str, Any]) -> EngineArgs:
    """One EngineArgs from LLM's keyword arguments; unknown names and double specifications are errors."""
    unknown = sorted(set(kwargs) - set(EngineArgs.field_names()))
    if unknown:
        raise TypeError(f"LLM() got unexpected keyword argument(s) {', '.join(unknown)}; engine options are the "
                        f"EngineArgs fields: {', '.join(EngineArgs.field_names())}")
    if engine_args is not None:
        if kwargs or model != DEFAULT_MODEL:
            raise ValueError("pass either engine_args or its fields (model=, dtype=, ...) to LLM, not both")
        return engine_args
    if engine_config is not None:
        doubled = sorted(set(kwargs) - set(_LOADING_FIELDS))
        if doubled:
            raise ValueError(f"pass either engine_config or the engine fields {', '.join(doubled)} to LLM, not both")
        kwargs = {**kwargs, "max_model_len": engine_config.max_model_len}
    return EngineArgs(model=model, **kwargs)


def _signature() -> inspect.Signature:
    """LLM.__init__'s signature lists every EngineArgs field (with its one default) for help() and IDEs."""
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("self", positional),
              inspect.Parameter("model", positional, default=DEFAULT_MODEL, annotation=str)]
    for f in dataclasses.fields(EngineArgs):
        if f.name != "model":
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                            annotation=f.type))
    for name, annotation in (("engine_config", "EngineConfig | None"), ("engine_args", "EngineArgs | None")):
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return inspect.Signature(params)


LLM.__init__.__signature__ = _signature()  # type: ignore[attr-defined]


def _is_single(items) -> bool:
    return (isinstance(items, (str, bytes, bytearray, memoryview, np.ndarray, torch.Tensor)) or hasattr(items, "read")
            or hasattr(items, "__fspath__") or not isinstance(items, Iterable))


def _as_list(items) -> list:
    return [items] if _is_single(items) else list(items)


def _as_iterable(items) -> Iterable:
    """One input as a one-item list; an iterable of inputs as it is (not materialised: it may be a generator)."""
    return [items] if _is_single(items) else items


def _raising(outcomes: Iterator[tuple[int, TranscriptionResult | Exception]],
             raise_errors: bool) -> Iterator[tuple[int, TranscriptionResult | Exception]]:
    """Pass the outcomes on, raising an input's error instead when asked; closing it aborts the work in flight."""
    try:
        for index, outcome in outcomes:
            if raise_errors and isinstance(outcome, Exception):
                raise outcome
            yield index, outcome
    finally:
        outcomes.close()


def _decode_or_error(item: AudioSource) -> np.ndarray | AudioDecodeError:
    try:
        return load_audio(item)
    except AudioDecodeError as exc:
        return exc
