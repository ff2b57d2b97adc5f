"""int8 weights for the CPU (`--quantization int8`), as CTranslate2's int8 compute type does for faster-whisper.

On the CPU every Whisper step is bound by reading weights (a tiny.en decode step reads ~110 MB in float32, 80 MB of
it the 51864-row output projection) or by float32 matrix throughput (the encoder). Each linear layer, and the
output projection tied to the token embedding, becomes per-output-channel symmetric int8 weights run by PyTorch's
dynamic-quantized linear (fbgemm / oneDNN: activations quantized per call, int8 dot products, float32 out).
Embeddings, convolutions, layer norms and attention stay float32, and so does the KV cache.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from vllm_whisper.model_executor.whisper import WhisperModel

QUANTIZATION_METHODS = ("int8",)


@lru_cache(maxsize=1)
def _has_vnni() -> bool:
    """x86 VNNI multiplies u8 x s8 into int32 without the int16 saturation of older AVX2 paths, so activations can use
    all 8 bits there; elsewhere they are reduced to 7 bits (PyTorch's default for x86)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


class Int8Linear(nn.Module):
    """y = x W^T + b with W stored as int8 per output row (scale = max |row| / 127)."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        weight = weight.detach().float().cpu()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        scales = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
        zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
        bias = None if bias is None else bias.detach().float().cpu()
        self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        self._reduce_range = not _has_vnni()

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32:
            raise ValueError(f"int8 layers take float32 activations, got {x.dtype}; load the model in float32")
        shape = x.shape
        out = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).contiguous(), self._packed,
                                                 self._reduce_range)
        return out.reshape(*shape[:-1], self.out_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        return cls(linear.weight, linear.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def check_quantization(method: str | None, device: str | torch.device, dtype: torch.dtype) -> None:
    """ValueError with the fix when a quantization method cannot run with this device and dtype."""
    if method is None:
        return
    if method not in QUANTIZATION_METHODS:
        raise ValueError(f"quantization must be one of {QUANTIZATION_METHODS} or none, got {method!r}")
    if torch.device(device).type != "cpu":
        raise ValueError("--quantization int8 is for the CPU; on a GPU use --dtype float16 or bfloat16")
    if dtype != torch.float32:
        raise ValueError(f"--quantization int8 keeps activations in float32; use --dtype float32 or auto, not {dtype}")
    engines = torch.backends.quantized.supported_engines
    if "x86" not in engines and "fbgemm" not in engines:
        raise ValueError("--quantization int8 needs PyTorch's x86 / fbgemm quantized kernels, which this build lacks")


def quantize_int8(model: WhisperModel) -> WhisperModel:
    """Replace every linear layer and the tied output projection with int8 weights, in place."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear.from_linear(child))
    model.logits_projection = Int8Linear(model.decoder.embed_tokens.weight, None)
    model.quantization = "int8"
    return model
