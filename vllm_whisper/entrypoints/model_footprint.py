"""How much memory a model will take once loaded, estimated before loading it (for --models-memory-budget-gib).

The estimate is the checkpoint's weight bytes on disk plus the KV-cache budget the engine flags give
(--kv-cache-space), the two parts an engine holds for as long as the model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vllm_whisper.engine_args import EngineArgs

GIB = 2**30


@dataclass(frozen=True)
class Footprint:
    """Bytes a loaded model holds: its weights and its KV cache."""

    weights_bytes: int
    kv_cache_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes

    @property
    def gib(self) -> float:
        return self.total_bytes / GIB


def checkpoint_bytes(directory: Path) -> int:
    """Bytes of the weight files in a model directory (CTranslate2 model.bin or its parts, Hugging Face files)."""
    names = ("model.bin", "model.safetensors", "pytorch_model.bin")
    files = [directory / name for name in names if (directory / name).is_file()]
    files += sorted(directory.glob("model.bin.part*")) + sorted(directory.glob("model-*.safetensors"))
    return sum(path.stat().st_size for path in files)


def model_directory(model: str) -> Path | None:
    """Where the model's files are: an offline alias's folder or a local directory; None for a hub id."""
    from vllm_whisper.model_executor.aliases import OFFLINE_ALIASES, resolve_alias

    if model in OFFLINE_ALIASES:
        return resolve_alias(model)
    path = Path(model).expanduser()
    return path if path.is_dir() else None


def estimate_footprint(engine_args: EngineArgs) -> Footprint:
    """The model's weights (checkpoint bytes; 0 when not on disk yet) plus its KV-cache budget."""
    directory = model_directory(engine_args.model)
    weights = checkpoint_bytes(directory) if directory is not None else 0
    return Footprint(weights, int(engine_args.kv_cache_space * GIB))
