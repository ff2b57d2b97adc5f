"""Which models one server serves: `serve A --model B ...` and `--models-dir DIR`, as ModelSpecs in order.

The first model is the default (a request without `model` goes to it) and keeps today's names (its --model value
and whisper-1, or --served-model-name); every other model answers to its own name. No heavy imports here: the
command line is checked before torch loads.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from vllm_whisper.engine_args import EngineArgs

WEIGHT_FILES = ("model.bin", "model.safetensors", "pytorch_model.bin")  # CTranslate2 and Hugging Face checkpoints


@dataclass(frozen=True)
class ModelSpec:
    """One served model: the name clients send, every name it answers to, and how to load it."""

    name: str
    served_names: tuple[str, ...]
    engine_args: EngineArgs


def looks_like_model_dir(directory: Path) -> bool:
    """A directory with a Whisper checkpoint in it (CTranslate2 model.bin or parts, or Hugging Face weights)."""
    if not directory.is_dir():
        return False
    return any((directory / name).is_file() for name in WEIGHT_FILES) or any(directory.glob("model.bin.part*"))


def models_in_dir(directory: Path) -> list[tuple[str, str]]:
    """(name, path) of each model subdirectory of `directory`, by name; ValueError when there is none."""
    if not directory.is_dir():
        raise ValueError(f"--models-dir {directory} is not a directory")
    found = [(child.name, str(child)) for child in sorted(directory.iterdir()) if looks_like_model_dir(child)]
    if not found:
        raise ValueError(f"--models-dir {directory} has no model subdirectories (each needs model.bin, "
                         "model.safetensors or pytorch_model.bin)")
    return found


def model_specs(args: argparse.Namespace) -> list[ModelSpec]:
    """The served models from the parsed server arguments, the default first; ValueError on clashing names."""
    base = EngineArgs.from_cli_args(args)
    given = getattr(args, "models", None)  # None: a namespace not resolved from argv (its --model alone)
    models_dir = getattr(args, "models_dir", None)
    models = [(model, model) for model in (given if given is not None else [base.model])]
    if models_dir:
        models += models_in_dir(Path(models_dir))
    if not models:
        models = [(base.model, base.model)]
    specs: list[ModelSpec] = []
    taken: dict[str, str] = {}
    for index, (name, path) in enumerate(models):
        engine_args = dataclasses.replace(base, model=path, served_model_name=None)
        names = tuple(base.served_names) if index == 0 else (name,)
        if index == 0 and not base.served_model_name:
            names = (name, "whisper-1")
        for served in names:
            if served in taken:
                raise ValueError(f"two served models answer to the name {served!r} ({taken[served]} and {path}); "
                                 "rename a directory or drop one --model")
            taken[served] = path
        specs.append(ModelSpec(name, names, engine_args))
    return specs
