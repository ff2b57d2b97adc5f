"""EngineArgs: every engine and model-loading option, defined once, with one default each (as vLLM's).

The CLI (`transcribe`, `serve`), the server, `LLM(...)` and the benchmarks all take their engine flags from
`EngineArgs.add_cli_args`, so a flag, its default and its validation cannot drift apart between entry points.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from vllm_whisper.config import (
    DECODER_CONTEXT, KV_CACHE_DTYPES, MIN_MODEL_LEN, EngineConfig, default_max_num_seqs,
)

if TYPE_CHECKING:
    from vllm_whisper.engine.llm_engine import LLMEngine
    from vllm_whisper.model_executor.loader import LoadedModel

DEFAULT_MODEL = "tiny.en"
DTYPES = ("auto", "float32", "fp32", "float", "float16", "fp16", "half", "bfloat16", "bf16")
QUANTIZATIONS = ("int8",)
ATTENTION_BACKENDS = ("auto", "torch", "triton")
DEVICE_TYPES = ("cpu", "cuda")
AUDIO_CONTEXTS = ("full", "auto")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class EngineArgs:
    """What to load and how the engine runs; field names are the flags' names with dashes."""

    model: str = field(default=DEFAULT_MODEL, metadata=_help(
        "alias (tiny.en, base), model directory (CTranslate2 or Hugging Face) or hub id"))
    served_model_name: list[str] | None = field(default=None, metadata=_help(
        "names clients may send as `model` to the server (default: the --model value and whisper-1)"))
    dtype: str = field(default="auto", metadata=_help(
        "weights and activations: auto (float16 on CUDA; on the CPU the fastest precision measured to keep accuracy: "
        "int8 weights where the CPU has VNNI/AMX, else bfloat16 where it has native bf16, else float32), float32, "
        "float16 or bfloat16"))
    quantization: str | None = field(default=None, metadata=_help(
        "int8: int8 weights for the linear layers (CPU, float32 activations; much faster; what --dtype auto picks "
        "on CPUs with VNNI/AMX)"))
    device: str | None = field(default=None, metadata=_help(
        "cpu or cuda (default: cuda when present, else cpu)"))
    max_num_seqs: int | None = field(default=None, metadata=_help(
        "most window decodes running at once (default: 64 on CUDA; 32 on the CPU, where a smaller batch keeps the "
        "serving tail under a sequential server's at nearly the same throughput)"))
    max_num_batched_tokens: int = field(default=8192, metadata=_help(
        "most decoder tokens fed in one engine step (prompts count in full, decodes one each)"))
    max_model_len: int = field(default=DECODER_CONTEXT, metadata=_help(
        f"decoder tokens per window, prompt included ({MIN_MODEL_LEN} to Whisper's context of {DECODER_CONTEXT}); "
        "a window samples at most min(224, max-model-len / 2) tokens"))
    block_size: int = field(default=16, metadata=_help("tokens per self-attention KV-cache block"))
    kv_cache_space: float = field(default=4.0, metadata=_help(
        "GiB of CPU memory for the KV cache (self-attention blocks + cross-attention slots); CPU only"))
    gpu_memory_utilization: float = field(default=0.9, metadata=_help(
        "fraction of GPU memory the process may use in total; CUDA only"))
    num_kv_blocks: int | None = field(default=None, metadata=_help(
        "exact number of self-attention KV blocks, overriding the memory budget (tuning, tests)"))
    num_cross_slots: int | None = field(default=None, metadata=_help(
        "exact number of cross-attention slots, overriding the memory budget (tuning, tests)"))
    attention_backend: str = field(default="auto", metadata=_help(
        "attention kernels: auto (Triton on CUDA, torch on CPU), torch, triton"))
    max_encoder_windows_per_step: int | None = field(default=None, metadata=_help(
        "new 30 s windows encoded per engine step (default: 16 on CUDA, 2 on CPU): lower keeps running streams' "
        "token gaps short, higher admits bursts faster"))
    encoder_layers_per_step: int | None = field(default=None, metadata=_help(
        "split new windows' encoding across engine steps, at most this many encoder layers per step, so running "
        "streams' decode steps never wait behind whole encoder passes (vLLM's chunked prefill, for the encoder); "
        "unset: whole windows in the step that admits them"))
    enforce_eager: bool = field(default=False, metadata=_help(
        "never capture CUDA graphs for decode steps (they are captured on CUDA with the Triton backend)"))
    audio_context: str = field(default="full", metadata=_help(
        "encoder frames per window: full (every window 30 s, 1500 frames) or auto (a window holding less audio is "
        "encoded over only the frames it needs plus 1 s, in 128-frame buckets of at least 1024 (20.5 s): faster "
        "on short clips, at the accuracy benchmarks/README.md measures; windows whose words are timestamped are "
        "always encoded whole)"))
    kv_cache_dtype: str = field(default="auto", metadata=_help(
        "what the cross-attention K/V cache stores (self-attention blocks keep the model's dtype): auto (bfloat16 "
        "on the CPU, where each decode step is bound by reading every window's cross K/V and a C++ kernel widens "
        "them to float32 as it reads; the model's dtype on a GPU), float32 or bfloat16"))

    def __post_init__(self) -> None:
        self._validate()

    # --- command line -------------------------------------------------------------------------------
    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser, only: Iterable[str] | None = None) -> None:
        """Add the engine flags (all, or the fields named in `only`) to a parser; help texts show defaults."""
        wanted = set(only) if only is not None else {f.name for f in dataclasses.fields(cls)}
        unknown = wanted - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"EngineArgs has no field(s) {sorted(unknown)}")
        group = parser.add_argument_group("engine", "model loading and engine options (shared by every entry point)")

        def add(name: str, *flags: str, **kwargs: Any) -> None:
            if name in wanted:
                kwargs.setdefault("default", cls.default(name))
                suffix = "" if "(default" in cls.help(name) else " (default: %(default)s)"
                group.add_argument(*flags, dest=name, help=cls.help(name).replace("%", "%%") + suffix, **kwargs)

        add("model", "--model")
        add("served_model_name", "--served-model-name", nargs="+")
        add("dtype", "--dtype", choices=DTYPES, metavar="DTYPE")
        add("quantization", "--quantization", choices=QUANTIZATIONS)
        add("device", "--device")
        add("max_num_seqs", "--max-num-seqs", type=int)
        add("max_num_batched_tokens", "--max-num-batched-tokens", type=int)
        add("max_model_len", "--max-model-len", type=int)
        add("block_size", "--block-size", type=int)
        add("kv_cache_space", "--kv-cache-space", type=float)
        add("gpu_memory_utilization", "--gpu-memory-utilization", type=float)
        add("num_kv_blocks", "--num-kv-blocks", type=int)
        add("num_cross_slots", "--num-cross-slots", type=int)
        add("attention_backend", "--attention-backend", choices=ATTENTION_BACKENDS)
        add("max_encoder_windows_per_step", "--max-encoder-windows-per-step", type=int)
        add("encoder_layers_per_step", "--encoder-layers-per-step", type=int)
        add("enforce_eager", "--enforce-eager", action="store_true")
        add("audio_context", "--audio-context", choices=AUDIO_CONTEXTS)
        add("kv_cache_dtype", "--kv-cache-dtype", choices=KV_CACHE_DTYPES)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "EngineArgs":
        """The EngineArgs of a parsed namespace; fields a parser did not define keep their defaults."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: getattr(args, name) for name in names if hasattr(args, name)})

    @classmethod
    def default(cls, name: str) -> Any:
        return cls.__dataclass_fields__[name].default

    @classmethod
    def help(cls, name: str) -> str:
        return cls.__dataclass_fields__[name].metadata["help"]

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_cli_args(self) -> list[str]:
        """The flags that reproduce these values on another entry point (those that differ from the defaults),
        e.g. for a benchmark that starts the server."""
        flags: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if isinstance(value, bool):
                flags.append(_flag(f.name))
            elif isinstance(value, list):
                flags += [_flag(f.name), *map(str, value)]
            else:
                flags += [_flag(f.name), str(value)]
        return flags

    # --- what the entry points build ----------------------------------------------------------------
    @property
    def resolved_device(self) -> str:
        """The device to load onto: the configured one, or cuda when present, else cpu."""
        if self.device is not None:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def resolved_max_num_seqs(self) -> int:
        """--max-num-seqs, or the default for the device the engine runs on."""
        return self.max_num_seqs if self.max_num_seqs is not None else default_max_num_seqs(self.resolved_device)

    @property
    def served_names(self) -> list[str]:
        """The names the server answers to."""
        return list(self.served_model_name) if self.served_model_name else [self.model, "whisper-1"]

    def create_engine_config(self) -> EngineConfig:
        return EngineConfig(
            max_num_seqs=self.resolved_max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=self.max_model_len, max_encoder_windows_per_step=self.max_encoder_windows_per_step,
            encoder_layers_per_step=self.encoder_layers_per_step,
            block_size=self.block_size, kv_cache_space_gib=self.kv_cache_space,
            gpu_memory_utilization=self.gpu_memory_utilization, num_kv_blocks=self.num_kv_blocks,
            num_cross_slots=self.num_cross_slots, attention_backend=self.attention_backend,
            enforce_eager=self.enforce_eager, audio_context=self.audio_context,
            kv_cache_dtype=self.kv_cache_dtype)

    def load_model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of model_executor.loader.load_model besides the model name."""
        return {"dtype": self.dtype, "device": self.resolved_device, "quantization": self.quantization}

    def load_model(self) -> "LoadedModel":
        from vllm_whisper.model_executor.loader import load_model

        return load_model(self.model, **self.load_model_kwargs())

    def create_engine(self, loaded: "LoadedModel | None" = None) -> "LLMEngine":
        """Load the model (unless given) and build the synchronous engine around it."""
        from vllm_whisper.engine.llm_engine import LLMEngine

        return LLMEngine(loaded if loaded is not None else self.load_model(), self.create_engine_config())

    # --- validation ---------------------------------------------------------------------------------
    def _validate(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("model (--model) must name an alias (tiny.en, base), a model directory or a hub id")
        if isinstance(self.served_model_name, str):
            self.served_model_name = [self.served_model_name]
        if isinstance(self.dtype, str):  # LLM(dtype=torch.float16) passes a torch.dtype through
            _check_choice("dtype", self.dtype, DTYPES, allow_none=False)
        _check_choice("quantization", self.quantization, QUANTIZATIONS, allow_none=True)
        _check_choice("attention_backend", self.attention_backend, ATTENTION_BACKENDS, allow_none=False)
        _check_choice("audio_context", self.audio_context, AUDIO_CONTEXTS, allow_none=False)
        _check_choice("kv_cache_dtype", self.kv_cache_dtype, KV_CACHE_DTYPES, allow_none=False)
        if self.device is not None and str(self.device).split(":")[0] not in DEVICE_TYPES:
            raise ValueError(f"device (--device) must be cpu or cuda (or cuda:N), got {self.device!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "num_kv_blocks", "num_cross_slots",
                     "max_encoder_windows_per_step", "encoder_layers_per_step"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value} ({_flag(name)})")
        if not MIN_MODEL_LEN <= self.max_model_len <= DECODER_CONTEXT:
            raise ValueError(f"max_model_len must be between {MIN_MODEL_LEN} and {DECODER_CONTEXT} (Whisper's decoder "
                             f"context), got {self.max_model_len} ({_flag('max_model_len')})")
        if self.kv_cache_space <= 0:
            raise ValueError(f"kv_cache_space must be a positive number of GiB, got {self.kv_cache_space} "
                             f"({_flag('kv_cache_space')})")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization} "
                             f"({_flag('gpu_memory_utilization')})")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_choice(name: str, value: Any, choices: tuple[str, ...], allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r} ({_flag(name)})")
