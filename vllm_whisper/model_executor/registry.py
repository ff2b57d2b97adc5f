"""Architecture name -> model class, so loaders and the engine never import a concrete model directly."""

from __future__ import annotations

from vllm_whisper.model_executor.interfaces import SupportsTranscription

_REGISTRY: dict[str, type] = {}


def register_model(architecture: str, model_class: type) -> None:
    """Make `architecture` (as named in a checkpoint's config.json) load into `model_class`."""
    if not issubclass(model_class, SupportsTranscription):
        raise TypeError(f"{model_class.__name__} must implement SupportsTranscription")
    _REGISTRY[architecture] = model_class


def resolve_model_class(architecture: str) -> type:
    if architecture not in _REGISTRY:
        raise ValueError(
            f"Unsupported model architecture {architecture!r}; supported: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[architecture]


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def _register_builtin() -> None:
    from vllm_whisper.model_executor.whisper import WhisperModel

    register_model("WhisperForConditionalGeneration", WhisperModel)


_register_builtin()
