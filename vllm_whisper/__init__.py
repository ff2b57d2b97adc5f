"""vllm-whisper: a Whisper-specialised inference engine with an OpenAI-compatible audio API."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["EngineArgs", "LLM", "TranscriptionParams", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import vllm_whisper` (e.g. for the version) does not load torch.
    if name == "LLM":
        from vllm_whisper.entrypoints.llm import LLM

        return LLM
    if name == "EngineArgs":
        from vllm_whisper.engine_args import EngineArgs

        return EngineArgs
    if name == "TranscriptionParams":
        from vllm_whisper.params import TranscriptionParams

        return TranscriptionParams
    raise AttributeError(f"module 'vllm_whisper' has no attribute {name!r}")
