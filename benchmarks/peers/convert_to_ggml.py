"""Convert our Whisper weights (an alias such as tiny.en, or a model directory) to whisper.cpp's ggml .bin file.

No ggml model can be downloaded here, so whisper.cpp runs on the very weights our engine loads: read through our
loader, renamed to openai/whisper's tensor names, written as whisper.cpp's convert-pt-to-ggml.py writes them (f16
matrices, f32 biases / norms / positional embeddings, conv biases as (n_state, 1)); q8_0 then quantizes the 2-D
matrices the way whisper-quantize does (conv weights stay f16).

    python benchmarks/peers/convert_to_ggml.py --model tiny.en --type q8_0 --out tiny.en-q8_0.bin
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from ggml_format import (  # noqa: E402  (sibling module; benchmarks/peers is not a package)
    GGML_FTYPE,
    GGML_QNT_VERSION,
    GGML_QNT_VERSION_FACTOR,
    GgmlHparams,
    GgmlTensor,
    write_ggml_model,
)

TYPES = ("f32", "f16", "q8_0")

# our (Hugging Face) names -> openai/whisper's, which whisper.cpp looks tensors up by
_LAYER_PARTS = {
    "self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln", "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln",
}
_TOP_LEVEL = {
    "encoder.embed_positions.weight": "encoder.positional_embedding",
    "encoder.layer_norm.weight": "encoder.ln_post.weight", "encoder.layer_norm.bias": "encoder.ln_post.bias",
    "decoder.embed_tokens.weight": "decoder.token_embedding.weight",
    "decoder.embed_positions.weight": "decoder.positional_embedding",
    "decoder.layer_norm.weight": "decoder.ln.weight", "decoder.layer_norm.bias": "decoder.ln.bias",
}
_ALWAYS_F32 = {"encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding",
               "decoder.positional_embedding"}


class ConversionError(RuntimeError):
    """The model cannot be written as a whisper.cpp file."""


def openai_name(name: str) -> str:
    """openai/whisper's name for our state-dict key: encoder.layers.0.fc1.weight -> encoder.blocks.0.mlp.0.weight."""
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name]
    if name.startswith(("encoder.conv1.", "encoder.conv2.")):
        return name
    match = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if match is None or match.group(3) not in _LAYER_PARTS:
        raise ConversionError(f"no whisper.cpp name for tensor {name!r}")
    side, layer, part, leaf = match.groups()
    return f"{side}.blocks.{layer}.{_LAYER_PARTS[part]}.{leaf}"


def tensor_kind(name: str, n_dims: int, target: str) -> str:
    """ggml type of one tensor in a file of type `target`: what whisper.cpp's loader expects for it."""
    if target == "f32" or n_dims < 2 or name in _ALWAYS_F32:
        return "f32"
    if target == "q8_0" and n_dims == 2:
        return "q8_0"
    return "f16"  # every matrix of an f16 file, and the 3-D conv weights of a quantized one


def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character -> byte map, inverted: turns tokenizer.json's vocabulary back into raw bytes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def vocabulary(tokenizer) -> list[bytes]:
    """The text tokens (ids below <|endoftext|>) as raw bytes in id order; whisper.cpp names the special ones itself."""
    decoder = gpt2_byte_decoder()
    words = []
    for token_id in range(tokenizer.eot):
        piece = tokenizer.tokenizer.id_to_token(token_id)
        if piece is None:
            raise ConversionError(f"tokenizer has no token with id {token_id}")
        words.append(bytes(decoder[ch] for ch in piece))
    return words


def convert(model: str, out: Path, target: str = "f16") -> Path:
    """Load `model` through our loader (float32) and write it to `out` as a whisper.cpp file of type `target`."""
    from vllm_whisper.model_executor.loader import load_model

    if target not in TYPES:
        raise ConversionError(f"unknown whisper.cpp type {target!r}; use one of {', '.join(TYPES)}")
    return convert_loaded(load_model(model, dtype="float32", device="cpu"), out, target)


def convert_loaded(loaded, out: Path, target: str = "f16") -> Path:
    """Write a loaded float model (a LoadedModel, not int8-quantized) as a whisper.cpp file of type `target`."""
    from vllm_whisper.audio.features import mel_filters

    if target not in TYPES:
        raise ConversionError(f"unknown whisper.cpp type {target!r}; use one of {', '.join(TYPES)}")
    config = loaded.config
    ftype = GGML_FTYPE[target] + (GGML_QNT_VERSION * GGML_QNT_VERSION_FACTOR if target == "q8_0" else 0)
    hparams = GgmlHparams(
        n_vocab=config.vocab_size, n_audio_ctx=config.max_source_positions, n_audio_state=config.d_model,
        n_audio_head=config.encoder_attention_heads, n_audio_layer=config.encoder_layers,
        n_text_ctx=config.max_target_positions, n_text_state=config.d_model,
        n_text_head=config.decoder_attention_heads, n_text_layer=config.decoder_layers,
        n_mels=config.num_mel_bins, ftype=ftype,
    )
    tensors = []
    for name, value in loaded.model.state_dict().items():
        data = value.detach().float().cpu().numpy()
        target_name = openai_name(name)
        if target_name in ("encoder.conv1.bias", "encoder.conv2.bias"):
            data = data.reshape(data.shape[0], 1)
        tensors.append(GgmlTensor(target_name, data, tensor_kind(target_name, data.ndim, target)))
    filters = mel_filters(config.num_mel_bins).numpy()
    return write_ggml_model(out, hparams, filters, vocabulary(loaded.tokenizer), tensors)


def default_cache_dir() -> Path:
    """Where converted files are kept: $VLLM_WHISPER_CACHE/ggml, else ~/.cache/vllm_whisper/ggml."""
    root = os.environ.get("VLLM_WHISPER_CACHE", Path.home() / ".cache" / "vllm_whisper")
    return Path(root) / "ggml"


def cached_model(model: str, target: str, cache_dir: Path | None = None) -> Path:
    """The converted file for an alias or directory, converted on first use only."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(model).strip("/"))
    path = (cache_dir or default_cache_dir()) / f"ggml-{safe}-{target}.bin"
    if not path.is_file():
        convert(model, path, target)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en", help="an offline alias or a model directory our loader reads")
    parser.add_argument("--type", choices=TYPES, default="f16")
    parser.add_argument("--out", type=Path, default=None, help="default: the cache used by the benchmarks")
    args = parser.parse_args()
    path = convert(args.model, args.out, args.type) if args.out else cached_model(args.model, args.type)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
