"""Random-weight Whisper models of any shape: small ones for fast engine tests, real shapes for speed work."""

from __future__ import annotations

from pathlib import Path

import torch

from vllm_whisper.model_executor.loader import GenerationDefaults, LoadedModel
from vllm_whisper.model_executor.whisper import WhisperModel, sinusoids
from vllm_whisper.model_executor.whisper_config import WhisperConfig
from vllm_whisper.tokenizer import WhisperTokenizer


def random_model(config: WhisperConfig, tokenizer: WhisperTokenizer, dtype: torch.dtype = torch.float32,
                 device: str = "cpu", seed: int = 0, name: str = "random") -> LoadedModel:
    """A LoadedModel with N(0, 0.02) weights (layer norms at identity) around the given tokenizer."""
    if tokenizer.model_vocab_size != config.vocab_size:
        raise ValueError(f"tokenizer is for {tokenizer.model_vocab_size} tokens, config has {config.vocab_size}")
    generator = torch.Generator().manual_seed(seed)
    with torch.device(device):
        model = WhisperModel(config)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "layer_norm" in param_name:
                param.fill_(1.0 if param_name.endswith("weight") else 0.0)
            elif param_name == "encoder.embed_positions.weight":
                param.copy_(sinusoids(*param.shape))
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    model = model.to(dtype).eval()
    model.tokenizer = tokenizer
    generation = GenerationDefaults(tuple(tokenizer.default_suppress_tokens()), tuple(tokenizer.suppress_at_begin()))
    return LoadedModel(name, Path("."), model, tokenizer, config, generation, "random")
