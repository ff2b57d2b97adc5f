"""A plain greedy decoder for one 30 s window: no batching, no paging, a contiguous KV cache.

Kept as the test oracle: the batched engine must produce the same token ids on the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vllm_whisper.model_executor.whisper import ContiguousKVCache, EncodedWindow, WhisperModel
from vllm_whisper.sampling.reference import apply_rules_row
from vllm_whisper.sampling.rules import LogitsRules
from vllm_whisper.tokenizer import WhisperTokenizer


@dataclass
class WindowDecodeResult:
    """What decoding one window produced."""

    tokens: list[int]  # sampled tokens, without the prompt and without the final end-of-text
    sum_logprob: float
    no_speech_prob: float
    finished: bool  # True when end-of-text was sampled (False: hit max_new_tokens)

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / (len(self.tokens) + 1)


@torch.inference_mode()
def encode_window(model: WhisperModel, mel: Tensor) -> EncodedWindow:
    """Run the encoder on (n_mels, 3000) features and project the cross-attention K/V."""
    encoder_out = model.encode(mel.unsqueeze(0).to(model.device))
    return EncodedWindow(encoder_out, model.compute_cross_kv(encoder_out))


@torch.inference_mode()
def greedy_decode(
    model: WhisperModel,
    window: EncodedWindow,
    prompt: list[int],
    rules: LogitsRules,
    max_new_tokens: int,
    no_speech_index: int | None = None,
    temperature: float = 0.0,
    seed: int | None = None,
) -> WindowDecodeResult:
    """Greedy decoding from `prompt` (or sampling when temperature > 0, seeded like the engine's requests);
    no_speech_index is the prompt position of <|startoftranscript|>."""
    tokenizer: WhisperTokenizer = model.tokenizer
    limit = min(max_new_tokens, model.config.max_target_positions - len(prompt))
    if limit <= 0:
        raise ValueError(f"the prompt of {len(prompt)} tokens leaves no room in the 448-token decoder")
    cache = ContiguousKVCache(model.config.decoder_layers, window.cross_kv)
    tokens = torch.tensor([prompt], device=model.device)
    positions = torch.arange(len(prompt), device=model.device)[None]
    hidden = model.decode(tokens, positions, cache)
    no_speech_prob = float("nan")
    if no_speech_index is not None:
        first = model.compute_logits(hidden[0, no_speech_index])
        no_speech_prob = float(torch.softmax(first, dim=-1)[tokenizer.special.no_speech])
    logits = model.compute_logits(hidden[0, -1])
    generated: list[int] = []
    sum_logprob = 0.0
    finished = False
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=model.device)
        generator.manual_seed(seed if seed is not None else torch.seed())
    for step in range(limit):
        ruled = apply_rules_row(rules, logits, generated)
        if generator is None:
            token = int(torch.argmax(ruled))
        else:
            probs = torch.softmax(ruled.float() / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        sum_logprob += float(torch.log_softmax(ruled, dim=-1)[token])
        if token == tokenizer.eot:
            finished = True
            break
        generated.append(token)
        if step + 1 == limit:
            break
        position = torch.tensor([[len(prompt) + step]], device=model.device)
        hidden = model.decode(torch.tensor([[token]], device=model.device), position, cache)
        logits = model.compute_logits(hidden[0, -1])
    return WindowDecodeResult(generated, sum_logprob, no_speech_prob, finished)


@torch.inference_mode()
def detect_language(model: WhisperModel, window: EncodedWindow) -> tuple[str, dict[str, float]]:
    """Most likely language from the logits after <|startoftranscript|>, and every language's probability."""
    tokenizer: WhisperTokenizer = model.tokenizer
    if not tokenizer.is_multilingual:
        return "en", {"en": 1.0}
    cache = ContiguousKVCache(model.config.decoder_layers, window.cross_kv)
    tokens = torch.tensor([[tokenizer.sot]], device=model.device)
    hidden = model.decode(tokens, torch.zeros_like(tokens), cache)
    logits = model.compute_logits(hidden[0, -1])
    codes = list(tokenizer.language_to_id)
    ids = torch.tensor([tokenizer.language_to_id[c] for c in codes], device=logits.device)
    probs = torch.softmax(logits[ids], dim=-1).tolist()
    by_code = dict(zip(codes, probs))
    return max(by_code, key=by_code.get), by_code
