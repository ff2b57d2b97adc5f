"""int8 weights for the CPU (`--quantization int8`), as CTranslate2's int8 compute type does for faster-whisper.

On the CPU every Whisper step is bound by reading weights (a tiny.en decode step reads ~110 MB in float32, 80 MB of
it the 51864-row output projection) or by float32 matrix throughput (the encoder). Each linear layer, and the
output projection tied to the token embedding, becomes symmetric int8 weights with one scale per output channel;
each call quantizes its input with one scale per row (token or frame), multiplies int8 by int8 into int32
(torch._int_mm) and rescales to float32 (the quantize and rescale passes are vllm_whisper._C ops, one pass each).
Per-row input scales keep a sequence's result independent of what else is in the batch (a per-tensor scale would
let one loud row coarsen every other row's tokens). Embeddings, convolutions, layer norms, attention and the KV
cache stay float32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vllm_whisper import _custom_ops as ops
from vllm_whisper.model_executor.whisper import WhisperModel

QUANTIZATION_METHODS = ("int8",)


class Int8Linear(nn.Module):
    """y = x W^T + b with W as int8 per output channel and x quantized per row on each call."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        weight = weight.detach().float().cpu()
        self.out_features, self.in_features = weight.shape
        qweight, scales = ops.quantize_rows_int8(weight)
        self.register_buffer("qweight", qweight)  # (out, in) int8
        self.register_buffer("scales", scales.reshape(-1))  # (out,) float32
        self.register_buffer("bias", None if bias is None else bias.detach().float().cpu())

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32:
            raise ValueError(f"int8 layers take float32 activations, got {x.dtype}; load the model in float32")
        shape = x.shape
        xq, x_scale = ops.quantize_rows_int8(x.reshape(-1, self.in_features))
        out = ops.dequantize_int8_rows(torch._int_mm(xq, self.qweight.t()), x_scale, self.scales, self.bias)
        return out.reshape(*shape[:-1], self.out_features)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        return cls(linear.weight, linear.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel x per row"


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
    try:
        torch._int_mm(torch.ones(1, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    except RuntimeError as exc:
        raise ValueError(f"--quantization int8 needs PyTorch's int8 matrix multiply on the CPU: {exc}") from exc


def quantize_int8(model: WhisperModel) -> WhisperModel:
    """Replace every linear layer and the tied output projection with int8 weights, in place."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear.from_linear(child))
    model.logits_projection = Int8Linear(model.decoder.embed_tokens.weight, None)
    model.quantization = "int8"
    return model
