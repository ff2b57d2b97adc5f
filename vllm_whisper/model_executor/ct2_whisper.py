"""Map CTranslate2's WhisperSpec variables to our (Hugging Face style) parameter names and back.

CTranslate2 fuses self-attention q|k|v into `linear_0` and cross-attention k|v into `linear_1`; the k slices
carry all-zero biases, which Whisper's k projections do not have. int8/int16 weights are dequantized with their
`weight_scale` (stored value = round(weight * scale)).
"""

from __future__ import annotations

import re

import torch

from vllm_whisper.model_executor.ct2_format import Ct2Model
from vllm_whisper.model_executor.errors import ModelLoadError
from vllm_whisper.model_executor.whisper_config import WhisperConfig

_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


def _dequantize(variables: dict[str, torch.Tensor], label: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(name + "_scale")
        if tensor.dtype in (torch.int8, torch.int16) and scale is not None and tensor.dim() == 2:
            scale = scale.float().reshape(-1, 1) if scale.numel() > 1 else scale.float()
            tensor = tensor.float() / scale
        elif tensor.dtype in (torch.int8, torch.int16) and tensor.dim() >= 1:
            raise ModelLoadError(f"{label}: quantized variable {name} has no weight_scale; cannot dequantize")
        out[name] = tensor
    return out


def ct2_to_state_dict(ct2: Ct2Model, alignment_heads: list[list[int]], label: str) -> tuple[WhisperConfig, dict]:
    """Return the architecture and a float state dict for WhisperModel from a CTranslate2 Whisper model."""
    if ct2.spec != "WhisperSpec":
        raise ModelLoadError(f"{label} holds a {ct2.spec}, not a Whisper model (WhisperSpec)")
    v = _dequantize(ct2.variables, label)
    try:
        config = _config_from_variables(v, alignment_heads)
        sd: dict[str, torch.Tensor] = {}
        for side in ("encoder", "decoder"):
            layers = config.encoder_layers if side == "encoder" else config.decoder_layers
            for i in range(layers):
                src, dst = f"{side}/layer_{i}/", f"{side}.layers.{i}."
                _split_qkv(sd, v, src + "self_attention/", dst + "self_attn.", config.d_model)
                _norm(sd, v, src + "self_attention/layer_norm", dst + "self_attn_layer_norm")
                _linear(sd, v, src + "ffn/linear_0", dst + "fc1")
                _linear(sd, v, src + "ffn/linear_1", dst + "fc2")
                _norm(sd, v, src + "ffn/layer_norm", dst + "final_layer_norm")
                if side == "decoder":
                    _linear(sd, v, src + "attention/linear_0", dst + "encoder_attn.q_proj")
                    kv_w, kv_b = v[src + "attention/linear_1/weight"], v[src + "attention/linear_1/bias"]
                    sd[dst + "encoder_attn.k_proj.weight"] = kv_w[: config.d_model]
                    sd[dst + "encoder_attn.v_proj.weight"] = kv_w[config.d_model:]
                    sd[dst + "encoder_attn.v_proj.bias"] = kv_b[config.d_model:]
                    _linear(sd, v, src + "attention/linear_2", dst + "encoder_attn.out_proj")
                    _norm(sd, v, src + "attention/layer_norm", dst + "encoder_attn_layer_norm")
            _norm(sd, v, f"{side}/layer_norm", f"{side}.layer_norm")
            sd[f"{side}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
        for conv in ("conv1", "conv2"):
            _linear(sd, v, f"encoder/{conv}", f"encoder.{conv}")
        sd["decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    except KeyError as exc:
        raise ModelLoadError(f"{label} is missing the Whisper variable {exc.args[0]}") from exc
    return config, sd


def _config_from_variables(v: dict[str, torch.Tensor], alignment_heads: list[list[int]]) -> WhisperConfig:
    layer_counts = {"encoder": 0, "decoder": 0}
    for name in v:
        match = _LAYER.match(name)
        if match:
            side, index = match.group(1), int(match.group(2))
            layer_counts[side] = max(layer_counts[side], index + 1)
    d_model = v["decoder/embeddings/weight"].shape[1]
    return WhisperConfig(
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=layer_counts["encoder"],
        encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_layers=layer_counts["decoder"],
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        vocab_size=v["decoder/embeddings/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        alignment_heads=tuple(tuple(int(x) for x in pair) for pair in alignment_heads),
    )


def _linear(sd: dict, v: dict, src: str, dst: str) -> None:
    sd[dst + ".weight"] = v[src + "/weight"]
    if src + "/bias" in v:
        sd[dst + ".bias"] = v[src + "/bias"]


def _norm(sd: dict, v: dict, src: str, dst: str) -> None:
    sd[dst + ".weight"] = v[src + "/gamma"]
    sd[dst + ".bias"] = v[src + "/beta"]


def _split_qkv(sd: dict, v: dict, src: str, dst: str, d_model: int) -> None:
    weight, bias = v[src + "linear_0/weight"], v[src + "linear_0/bias"]
    sd[dst + "q_proj.weight"], sd[dst + "k_proj.weight"], sd[dst + "v_proj.weight"] = weight.split(d_model)
    sd[dst + "q_proj.bias"], _, sd[dst + "v_proj.bias"] = bias.split(d_model)
    _linear(sd, v, src + "linear_1", dst + "out_proj")


def state_dict_to_ct2(config: WhisperConfig, sd: dict[str, torch.Tensor]) -> Ct2Model:
    """Inverse mapping, used to write CTranslate2 models (tests build quantized and damaged copies with it)."""
    v: dict[str, torch.Tensor] = {}
    for side in ("encoder", "decoder"):
        layers = config.encoder_layers if side == "encoder" else config.decoder_layers
        heads = config.encoder_attention_heads if side == "encoder" else config.decoder_attention_heads
        v[f"{side}/num_heads"] = torch.tensor(heads, dtype=torch.int16)
        for i in range(layers):
            src, dst = f"{side}.layers.{i}.", f"{side}/layer_{i}/"
            q_w, k_w, v_w = (sd[src + f"self_attn.{p}_proj.weight"] for p in "qkv")
            v[dst + "self_attention/linear_0/weight"] = torch.cat([q_w, k_w, v_w])
            zero = torch.zeros_like(sd[src + "self_attn.q_proj.bias"])
            v[dst + "self_attention/linear_0/bias"] = torch.cat(
                [sd[src + "self_attn.q_proj.bias"], zero, sd[src + "self_attn.v_proj.bias"]]
            )
            _put_linear(v, sd, src + "self_attn.out_proj", dst + "self_attention/linear_1")
            _put_norm(v, sd, src + "self_attn_layer_norm", dst + "self_attention/layer_norm")
            _put_linear(v, sd, src + "fc1", dst + "ffn/linear_0")
            _put_linear(v, sd, src + "fc2", dst + "ffn/linear_1")
            _put_norm(v, sd, src + "final_layer_norm", dst + "ffn/layer_norm")
            if side == "decoder":
                _put_linear(v, sd, src + "encoder_attn.q_proj", dst + "attention/linear_0")
                k_w, v_w = sd[src + "encoder_attn.k_proj.weight"], sd[src + "encoder_attn.v_proj.weight"]
                v[dst + "attention/linear_1/weight"] = torch.cat([k_w, v_w])
                v_b = sd[src + "encoder_attn.v_proj.bias"]
                v[dst + "attention/linear_1/bias"] = torch.cat([torch.zeros_like(v_b), v_b])
                _put_linear(v, sd, src + "encoder_attn.out_proj", dst + "attention/linear_2")
                _put_norm(v, sd, src + "encoder_attn_layer_norm", dst + "attention/layer_norm")
        _put_norm(v, sd, f"{side}.layer_norm", f"{side}/layer_norm")
        v[f"{side}/position_encodings/encodings"] = sd[f"{side}.embed_positions.weight"]
    for conv in ("conv1", "conv2"):
        _put_linear(v, sd, f"encoder.{conv}", f"encoder/{conv}")
    v["decoder/embeddings/weight"] = sd["decoder.embed_tokens.weight"]
    v["decoder/projection/weight"] = v["decoder/embeddings/weight"]
    return Ct2Model("WhisperSpec", 3, v, {"decoder/projection/weight": "decoder/embeddings/weight"})


def _put_linear(v: dict, sd: dict, src: str, dst: str) -> None:
    v[dst + "/weight"] = sd[src + ".weight"]
    if src + ".bias" in sd:
        v[dst + "/bias"] = sd[src + ".bias"]


def _put_norm(v: dict, sd: dict, src: str, dst: str) -> None:
    v[dst + "/gamma"] = sd[src + ".weight"]
    v[dst + "/beta"] = sd[src + ".bias"]
