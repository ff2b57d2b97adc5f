"""Write a loaded model back out as a Hugging Face or CTranslate2 directory (conversion between formats)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from vllm_whisper.model_executor.ct2_format import write_ct2_model
from vllm_whisper.model_executor.ct2_whisper import state_dict_to_ct2
from vllm_whisper.model_executor.hf_format import write_hf_dir
from vllm_whisper.model_executor.loader import LoadedModel


def export_hf(loaded: LoadedModel, out_dir: Path, dtype: torch.dtype | None = None) -> Path:
    """Save as a Hugging Face directory (config.json, generation_config.json, model.safetensors, tokenizer.json)."""
    state_dict = _state_dict(loaded, dtype)
    return write_hf_dir(
        out_dir, loaded.config, state_dict, loaded.tokenizer, loaded.source_dir / "tokenizer.json",
        list(loaded.generation.suppress_tokens), list(loaded.generation.begin_suppress_tokens),
    )


def export_ct2(loaded: LoadedModel, out_dir: Path, dtype: torch.dtype | None = None) -> Path:
    """Save as a CTranslate2 / faster-whisper directory (model.bin, config.json, tokenizer.json)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_ct2_model(out_dir / "model.bin", state_dict_to_ct2(loaded.config, _state_dict(loaded, dtype)))
    tok = loaded.tokenizer
    config = {
        "alignment_heads": [list(p) for p in loaded.config.alignment_heads],
        "lang_ids": sorted(tok.language_to_id.values()),
        "suppress_ids": list(loaded.generation.suppress_tokens),
        "suppress_ids_begin": list(loaded.generation.begin_suppress_tokens),
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(loaded.source_dir / "tokenizer.json", out_dir / "tokenizer.json")
    return out_dir


def _state_dict(loaded: LoadedModel, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return {
        k: (v.detach().cpu().to(dtype) if dtype is not None else v.detach().cpu())
        for k, v in loaded.model.state_dict().items()
    }
