"""Engine configuration; every value is validated here so bad flags fail at start-up with a clear message."""

from __future__ import annotations

from dataclasses import dataclass

KV_CACHE_DTYPES = ("auto", "float32", "bfloat16")
DECODER_CONTEXT = 448  # Whisper's decoder positions (max_target_positions of every released checkpoint)
MIN_MODEL_LEN = 16
REFERENCE_MAX_NEW_TOKENS = 224  # the reference samples at most half the context per window
# Running window decodes by default. On the CPU the encoder takes most of every step, so 64 windows in one batch
# stretch each one's latency (processor sharing); 32 keeps 64 streams' p99 under a sequential server's at nearly the
# same requests/s (README, Performance: benchmark_serving.py --concurrency 64, 2026-12-04).
DEFAULT_MAX_NUM_SEQS = {"cuda": 64, "cpu": 32}


def default_max_num_seqs(device: str) -> int:
    """The default of max_num_seqs (running window decodes) on a device: cpu, cuda or cuda:N."""
    return DEFAULT_MAX_NUM_SEQS["cuda" if str(device).startswith("cuda") else "cpu"]


@dataclass(frozen=True)
class EngineConfig:
    """How the engine batches and how much memory its caches get.

    max_num_seqs: most sequences decoding at once.
    max_num_batched_tokens: most decoder tokens fed in one step (prompts count in full, decodes one each).
    max_model_len: decoder tokens per window, prompt included (16 to 448); a window samples at most
        default_max_new_tokens = min(224, max_model_len // 2) tokens, the other half holds the previous-text prompt.
    max_encoder_windows_per_step: most new 30 s windows encoded in one step (bounds a step's latency);
        None picks 16 on CUDA and 2 on CPU, where larger encoder batches measured slower (cache-bound).
    encoder_layers_per_step: split the encoding of new windows across steps, at most this many encoder layers
        per step (engine/chunked_encoder.py); None encodes whole windows in the step that admits them.
    block_size: tokens per self-attention KV block.
    kv_cache_space_gib: CPU memory for the self-attention blocks and cross-attention slots together.
    gpu_memory_utilization: fraction of GPU memory the process may use in total (GPU only).
    num_kv_blocks / num_cross_slots: exact pool sizes, overriding the budget (tests and tuning).
    attention_backend: "auto" (Triton on CUDA, torch on CPU), "torch" or "triton".
    enforce_eager: never capture CUDA graphs (they are captured on CUDA with the Triton backend, one per decode
        batch-size bucket up to max_num_seqs; capture takes seconds and some GPU memory at start-up).
    audio_context: "full" encodes every window over 1500 encoder frames (30 s); "auto" encodes a window holding
        less audio over only the frames it needs (engine/audio_context.py), trading some accuracy for speed.
    kv_cache_dtype: what the cross-attention slots store (engine/cache_dtype.py; self-attention blocks keep the
        model's dtype): "auto" (bfloat16 on the CPU, where a decode step is bound by reading the cross K/V; the
        model's dtype on a GPU), "float32" or "bfloat16".
    """

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 8192
    max_encoder_windows_per_step: int | None = None
    encoder_layers_per_step: int | None = None
    block_size: int = 16
    kv_cache_space_gib: float = 4.0
    gpu_memory_utilization: float = 0.9
    num_kv_blocks: int | None = None
    num_cross_slots: int | None = None
    attention_backend: str = "auto"
    enforce_eager: bool = False
    max_model_len: int = DECODER_CONTEXT
    audio_context: str = "full"
    kv_cache_dtype: str = "auto"

    def __post_init__(self) -> None:
        positive = ("max_num_seqs", "max_num_batched_tokens", "max_encoder_windows_per_step", "block_size",
                    "encoder_layers_per_step")
        for name in positive:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not MIN_MODEL_LEN <= self.max_model_len <= DECODER_CONTEXT:
            raise ValueError(f"max_model_len must be between {MIN_MODEL_LEN} and {DECODER_CONTEXT}, "
                             f"got {self.max_model_len}")
        if self.kv_cache_space_gib <= 0:
            raise ValueError(f"kv_cache_space_gib must be positive, got {self.kv_cache_space_gib}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        for name in ("num_kv_blocks", "num_cross_slots"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.attention_backend not in ("auto", "torch", "triton"):
            raise ValueError(f"attention_backend must be auto, torch or triton, "
                             f"got {self.attention_backend!r}")
        if self.audio_context not in ("full", "auto"):
            raise ValueError(f"audio_context must be full or auto, got {self.audio_context!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                             f"got {self.kv_cache_dtype!r}")

    @property
    def default_max_new_tokens(self) -> int:
        """Tokens a window samples unless a request asks for fewer: half of max_model_len (the other half holds
        the previous-text prompt), at most 224 as the reference. Every entry point builds its params from this."""
        return min(REFERENCE_MAX_NEW_TOKENS, self.max_model_len // 2)

    def encoder_windows_per_step(self, device_type: str) -> int:
        if self.max_encoder_windows_per_step is not None:
            return self.max_encoder_windows_per_step
        return 16 if device_type == "cuda" else 2
