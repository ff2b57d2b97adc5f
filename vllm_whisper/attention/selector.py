"""Which attention implementation the engine uses: `--attention-backend auto|torch|triton`.

auto picks Triton on CUDA (compute capability 7.5 and up, Triton installed, power-of-two head dim) and the torch
reference everywhere else. triton on the CPU is allowed only under the Triton interpreter (TRITON_INTERPRET=1,
tests). A backend is the decoder attention built per step plus the encoder's self-attention function, which
the runner passes to each encoder call (on Turing the Triton backend keeps the encoder on SDPA: Triton 3.6 lowers
its dots to FMA there).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from vllm_whisper.attention.kv_cache_layout import KVCacheTensors
from vllm_whisper.attention.metadata import PagedAttentionMetadata
from vllm_whisper.attention.torch_paged import TorchPagedAttention
from vllm_whisper.model_executor.whisper import EncoderAttention

ATTENTION_BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    decoder: Callable[[KVCacheTensors, PagedAttentionMetadata], object]  # -> DecoderAttention for one step
    encoder: EncoderAttention  # (batch, heads, frames, head_dim) q, k, v -> output, no mask


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_usable(device: torch.device, head_dim: int | None) -> str | None:
    """Why Triton cannot run here, or None when it can."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if head_dim is not None and (head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1)):
        return f"the Triton kernels need a power-of-two head dim from 16 to 256, the model has {head_dim}"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (7, 5):
            return f"the Triton kernels need compute capability 7.5 or newer, the GPU has {major}.{minor}"
        return None
    if device.type == "cpu" and _triton_interpreting():
        return None
    return "Triton needs a CUDA device (on the CPU only under TRITON_INTERPRET=1)"


def resolve_backend_name(requested: str, device: torch.device, head_dim: int | None = None) -> str:
    """The concrete backend for a request; ValueError when an explicit choice cannot run on this device."""
    if requested not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {requested!r}")
    if requested == "auto":
        if device.type == "cuda" and _triton_usable(device, head_dim) is None:
            return "triton"
        return "torch"
    if requested == "triton":
        reason = _triton_usable(device, head_dim)
        if reason is not None:
            raise ValueError(f"--attention-backend triton: {reason}; use torch or auto")
    return requested


def get_attention_backend(requested: str, device: torch.device, head_dim: int | None = None) -> AttentionBackend:
    name = resolve_backend_name(requested, device, head_dim)
    if name == "triton":
        from vllm_whisper.attention.triton_backend import TritonPagedAttention
        from vllm_whisper.kernels.encoder_attention import encoder_attention

        if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
            # Triton 3.6 lowers dots to FMA on Turing: the decode kernels have no dots and stay on Triton, the
            # compute-bound encoder stays on SDPA, which uses the tensor cores.
            return AttentionBackend("triton", TritonPagedAttention, F.scaled_dot_product_attention)
        return AttentionBackend("triton", TritonPagedAttention, encoder_attention)
    return AttentionBackend("torch", TorchPagedAttention, F.scaled_dot_product_attention)
