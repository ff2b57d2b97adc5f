"""What the cross-attention K/V cache stores (`--kv-cache-dtype`; self-attention blocks keep the model's dtype).

A CPU decode step reads every running window's whole cross-attention K/V (1500 frames x d_model, K and V, per
decoder layer: 18 MB per window for tiny.en in float32), which is far more than the weights, so the step is bound
by those bytes. `auto` stores the caches in bfloat16 on the CPU, where the C++ cross-attention kernel widens each
value to float32 as it reads it (scores, softmax and sums stay float32): half the bytes per step, at the accuracy
README "Performance" measures. Without that kernel (extension not built) or with bfloat16 activations there is no
such win and auto keeps the model's dtype; on a GPU auto is always the model's dtype (the Triton kernels and CUDA
graphs read the cache in the activations' dtype).
"""

from __future__ import annotations

import torch

from vllm_whisper import _custom_ops as ops

NAMED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_kv_cache_dtype(choice: str, model_dtype: torch.dtype, device: torch.device,
                           attention_backend: str = "torch") -> torch.dtype:
    """The cache dtype for `--kv-cache-dtype choice`; ValueError for a combination the backends cannot read."""
    torch_on_cpu = device.type == "cpu" and attention_backend == "torch"
    if choice == "auto":
        if torch_on_cpu and model_dtype == torch.float32 and ops.has_cpu_cross_attention():
            return torch.bfloat16
        return model_dtype
    if choice not in NAMED_DTYPES:
        raise ValueError(f"kv_cache_dtype must be auto, float32 or bfloat16, got {choice!r}")
    wanted = NAMED_DTYPES[choice]
    if not torch_on_cpu and wanted != model_dtype:
        raise ValueError(f"--kv-cache-dtype {choice} with the {attention_backend} attention backend on "
                         f"{device.type}: its kernels read the cache in the model's dtype "
                         f"({str(model_dtype).removeprefix('torch.')}); use --kv-cache-dtype auto")
    return wanted
