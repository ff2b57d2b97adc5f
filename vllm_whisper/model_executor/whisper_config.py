"""Architecture of one Whisper checkpoint: every released shape differs only in these numbers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WhisperConfig:
    """Dimensions of a Whisper encoder-decoder (tiny .. large-v3-turbo)."""

    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    decoder_layers: int = 4
    decoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    decoder_ffn_dim: int = 1536
    vocab_size: int = 51864
    max_source_positions: int = 1500
    max_target_positions: int = 448
    alignment_heads: tuple[tuple[int, int], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.num_mel_bins not in (80, 128):
            raise ValueError(f"num_mel_bins must be 80 or 128, got {self.num_mel_bins}")
        for heads in (self.encoder_attention_heads, self.decoder_attention_heads):
            if self.d_model % heads:
                raise ValueError(f"d_model {self.d_model} is not divisible by {heads} attention heads")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.decoder_attention_heads

    @property
    def is_multilingual(self) -> bool:
        return self.vocab_size >= 51865


# Real shapes of the released checkpoints, for random-weight speed work and tests of every size.
WHISPER_SHAPES: dict[str, WhisperConfig] = {
    "tiny": WhisperConfig(80, 384, 4, 6, 4, 6, 1536, 1536, 51865),
    "tiny.en": WhisperConfig(80, 384, 4, 6, 4, 6, 1536, 1536, 51864),
    "base": WhisperConfig(80, 512, 6, 8, 6, 8, 2048, 2048, 51865),
    "base.en": WhisperConfig(80, 512, 6, 8, 6, 8, 2048, 2048, 51864),
    "small": WhisperConfig(80, 768, 12, 12, 12, 12, 3072, 3072, 51865),
    "small.en": WhisperConfig(80, 768, 12, 12, 12, 12, 3072, 3072, 51864),
    "medium": WhisperConfig(80, 1024, 24, 16, 24, 16, 4096, 4096, 51865),
    "medium.en": WhisperConfig(80, 1024, 24, 16, 24, 16, 4096, 4096, 51864),
    "large-v2": WhisperConfig(80, 1280, 32, 20, 32, 20, 5120, 5120, 51865),
    "large-v3": WhisperConfig(128, 1280, 32, 20, 32, 20, 5120, 5120, 51866),
    "large-v3-turbo": WhisperConfig(128, 1280, 32, 20, 4, 20, 5120, 5120, 51866),
}
