"""Whisper encoder and decoder in PyTorch, for every released shape (80 or 128 mel bins, fp32/fp16/bf16).

The split mirrors the engine: `encode` runs once per 30 s window, `compute_cross_kv` projects that output to
every decoder layer's cross-attention K/V once, and `decode` runs one or more decoder tokens through a
DecoderAttention supplied by the caller (the contiguous reference here, the engine's paged cache and slots).
Parameter names follow Hugging Face's WhisperForConditionalGeneration (without the `model.` prefix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vllm_whisper.model_executor.interfaces import AudioConfig, SupportsTranscription
from vllm_whisper.model_executor.whisper_config import WhisperConfig

CrossKV = list[tuple[Tensor, Tensor]]  # per decoder layer: (k, v), each (batch, heads, 1500, head_dim)
# The encoder's self-attention: (batch, heads, frames, head_dim) q, k, v -> output, no mask. Callers pass theirs to
# WhisperModel.encode (the engine: its attention backend's); SDPA by default.
EncoderAttention = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class EncodedWindow:
    """Encoder output and cross-attention K/V of one window, computed once and reused."""

    encoder_out: Tensor
    cross_kv: CrossKV


class DecoderAttention(Protocol):
    """Where the decoder's attention happens: the caller owns the self-attention cache and the cross K/V."""

    def self_attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Store the new tokens' K/V, attend causally over the cache. (batch, heads, new, head_dim) each."""
        ...

    def cross_attend(self, layer: int, q: Tensor) -> Tensor:
        """Attend the new tokens' queries (batch, heads, new, head_dim) over the window's cross K/V."""
        ...


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """The encoder's fixed sinusoidal position table (sin half, then cos half)."""
    log_timescale_increment = torch.log(torch.tensor(max_timescale)) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


class Attention(nn.Module):
    """Multi-head attention projections; the attention itself is done by the caller's path."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = d_model // heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        b, h, t, d = x.shape
        return self.out_proj(x.transpose(1, 2).reshape(b, t, h * d))

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))


class EncoderLayer(nn.Module):
    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.self_attn = Attention(config.d_model, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.fc1 = nn.Linear(config.d_model, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, x: Tensor, attention: EncoderAttention) -> Tensor:
        h = self.self_attn_layer_norm(x)
        q = self.self_attn.split_heads(self.self_attn.q_proj(h))
        k, v = self.self_attn.project_kv(h)
        x = x + self.self_attn.merge_heads(attention(q, k, v))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class DecoderLayer(nn.Module):
    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.self_attn = Attention(config.d_model, config.decoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.encoder_attn = Attention(config.d_model, config.decoder_attention_heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.fc1 = nn.Linear(config.d_model, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, x: Tensor, layer: int, attention: DecoderAttention) -> Tensor:
        h = self.self_attn_layer_norm(x)
        q = self.self_attn.split_heads(self.self_attn.q_proj(h))
        k, v = self.self_attn.project_kv(h)
        x = x + self.self_attn.merge_heads(attention.self_attend(layer, q, k, v))
        h = self.encoder_attn_layer_norm(x)
        q = self.encoder_attn.split_heads(self.encoder_attn.q_proj(h))
        x = x + self.encoder_attn.merge_heads(attention.cross_attend(layer, q))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class WhisperEncoder(nn.Module):
    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.conv1 = nn.Conv1d(config.num_mel_bins, config.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.d_model, config.d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(config.max_source_positions, config.d_model)
        with torch.no_grad():
            self.embed_positions.weight.copy_(sinusoids(config.max_source_positions, config.d_model))
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, mel: Tensor, attention: EncoderAttention = F.scaled_dot_product_attention) -> Tensor:
        x = self.embed(mel)
        for layer in self.layers:
            x = layer(x, attention)
        return self.layer_norm(x)

    def embed(self, mel: Tensor) -> Tensor:
        """The convolution stem and positions: (batch, n_mels, 2n) -> (batch, n, d_model). n is 1500 (30 s) for a
        full window; a shortened audio context (engine/audio_context.py) passes fewer frames and gets the first n
        positions, as whisper.cpp's audio_ctx does."""
        limit = 2 * self.embed_positions.weight.shape[0]
        if mel.shape[-1] > limit or mel.shape[-1] % 2:
            raise ValueError(f"encoder takes an even number of mel frames up to {limit} (30 s), got {mel.shape[-1]}; "
                             "pad features with pad_or_trim_frames")
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        return x + self.embed_positions.weight[:x.shape[1]]


class WhisperDecoder(nn.Module):
    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_positions = nn.Embedding(config.max_target_positions, config.d_model)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, tokens: Tensor, positions: Tensor, attention: DecoderAttention) -> Tensor:
        x = self.embed_tokens(tokens) + self.embed_positions(positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, i, attention)
        return self.layer_norm(x)


class WhisperModel(nn.Module, SupportsTranscription):
    """Whisper for transcription and translation; weights come from model_executor.loader."""

    supports_transcription_only: ClassVar[bool] = True

    def __init__(self, config: WhisperConfig):
        super().__init__()
        self.config = config
        self.encoder = WhisperEncoder(config)
        self.decoder = WhisperDecoder(config)
        self.logits_projection: nn.Module | None = None  # set by quantization: the tied projection's int8 copy
        self.quantization: str | None = None

    # --- the three steps the engine schedules --------------------------------------------------------
    def encode(self, mel: Tensor, attention: EncoderAttention | None = None) -> Tensor:
        """(batch, n_mels, 3000) log-mel -> (batch, 1500, d_model) encoder states (fewer frames: a shortened context,
        see WhisperEncoder.embed); `attention` runs the encoder's
        self-attention (default SDPA), passed per call so concurrent callers never share a swapped-in kernel."""
        return self.encoder(mel.to(self.dtype), attention or F.scaled_dot_product_attention)

    def encode_layers(self, x: Tensor | None, mel: Tensor | None, start: int, stop: int,
                      attention: EncoderAttention | None = None) -> Tensor:
        """Part of encode(), for encoding split across engine steps: the stem first (x is None: from mel), then
        encoder layers [start, stop), then the final layer norm once stop is the last layer. Chained calls over
        0..num_layers give exactly encode()'s result."""
        attention = attention or F.scaled_dot_product_attention
        if x is None:
            x = self.encoder.embed(mel.to(self.dtype))
        for layer in self.encoder.layers[start:stop]:
            x = layer(x, attention)
        return self.encoder.layer_norm(x) if stop >= len(self.encoder.layers) else x

    def compute_cross_kv(self, encoder_out: Tensor) -> CrossKV:
        """Project encoder states to every decoder layer's cross-attention K/V (done once per window)."""
        return [layer.encoder_attn.project_kv(encoder_out) for layer in self.decoder.layers]

    def decode(self, tokens: Tensor, positions: Tensor, attention: DecoderAttention,
               max_position: int | None = None) -> Tensor:
        """Decoder hidden states (batch, tokens, d_model) for new tokens at the given positions. Callers that know
        the largest position on the host pass it as max_position, which saves a device sync per step."""
        self.check_position(int(positions.max()) if max_position is None else max_position)
        return self.decoder(tokens, positions, attention)

    def check_position(self, max_position: int) -> None:
        """ValueError when a position is past the decoder's learned positions (448 for every released model)."""
        if max_position >= self.config.max_target_positions:
            raise ValueError(f"decoder position {max_position} exceeds the model's "
                             f"{self.config.max_target_positions} tokens")

    def compute_logits(self, hidden: Tensor) -> Tensor:
        """Output projection tied to the token embedding, in float32 for stable sampling."""
        if self.logits_projection is not None:
            return self.logits_projection(hidden).float()
        return (hidden @ self.decoder.embed_tokens.weight.T).float()

    # --- SupportsTranscription -----------------------------------------------------------------------
    def get_audio_config(self) -> AudioConfig:
        return AudioConfig(n_mels=self.config.num_mel_bins, encoder_frames=self.config.max_source_positions)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.embed_tokens.weight.device


class ContiguousKVCache:
    """Reference decoder attention: per-layer K/V grown by concatenation (rows of equal length) and the
    window's cross K/V held as plain tensors. The oracle the paged engine is tested against."""

    def __init__(self, num_layers: int, cross_kv: CrossKV):
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self.cross_kv = cross_kv

    def cross_attend(self, layer: int, q: Tensor) -> Tensor:
        k, v = self.cross_kv[layer]
        return F.scaled_dot_product_attention(q, k, v)

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def self_attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        past_k, past_v = self.keys[layer], self.values[layer]
        if past_k is not None:
            k = torch.cat([past_k, k], dim=2)
            v = torch.cat([past_v, v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        new, total = q.shape[2], k.shape[2]
        if new == 1:
            return F.scaled_dot_product_attention(q, k, v)
        query_pos = torch.arange(total - new, total, device=q.device)[:, None]
        mask = torch.arange(total, device=q.device)[None, :] <= query_pos
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def reorder(self, rows: Tensor) -> None:
        """Keep / duplicate batch rows (beam search bookkeeping)."""
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if k is not None:
                self.keys[i], self.values[i] = k[rows], v[rows]
        self.cross_kv = [(k[rows], v[rows]) for k, v in self.cross_kv]
