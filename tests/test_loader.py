"""load_model: aliases, CTranslate2 and Hugging Face directories, split and quantized files, and named errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from vllm_whisper.decoding.greedy import encode_window, greedy_decode
from vllm_whisper.audio import load_audio, window_features
from vllm_whisper.model_executor.ct2_format import read_ct2_model, write_ct2_model
from vllm_whisper.model_executor.ct2_whisper import state_dict_to_ct2
from vllm_whisper.model_executor.errors import ModelLoadError
from vllm_whisper.model_executor.export import export_ct2
from vllm_whisper.model_executor.loader import load_model
from vllm_whisper.model_executor.registry import register_model, resolve_model_class, supported_architectures
from vllm_whisper.model_executor.whisper import WhisperModel
from vllm_whisper.model_executor.whisper_config import WHISPER_SHAPES
from vllm_whisper.transcribe.sequential import build_rules
from vllm_whisper.params import TranscriptionParams


def decode_tokens(loaded, clip_path) -> list[int]:
    mel = window_features(load_audio(clip_path), loaded.config.num_mel_bins)
    window = encode_window(loaded.model, mel)
    prompt = loaded.tokenizer.sot_sequence("en", "transcribe", timestamps=True)
    rules = build_rules(loaded, TranscriptionParams())
    return greedy_decode(loaded.model, window, prompt, rules, 224).tokens


def test_aliases_load_and_transcribe(tiny_en, base_model, fox_clip):
    assert tiny_en.format == "ctranslate2" and tiny_en.config == WHISPER_SHAPES["tiny.en"].__class__(
        **{**WHISPER_SHAPES["tiny.en"].__dict__, "alignment_heads": tiny_en.config.alignment_heads}
    )
    assert base_model.config.d_model == 512 and base_model.config.vocab_size == 51865
    for loaded in (tiny_en, base_model):
        text = loaded.tokenizer.decode(decode_tokens(loaded, fox_clip.path)).lower()
        assert "quick brown fox" in text and "lazy dog" in text


def test_base_parts_are_joined_once_into_the_cache(base_model, monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_WHISPER_CACHE", str(tmp_path))
    loaded = load_model("base")
    joined = tmp_path / "base" / "model.bin"
    assert loaded.source_dir == tmp_path / "base" and joined.is_file()
    first_mtime = joined.stat().st_mtime_ns
    load_model("base")
    assert joined.stat().st_mtime_ns == first_mtime  # reused, not rewritten


def test_hf_directory_from_ct2_weights_gives_identical_tokens(tiny_en, hf_tiny_dir, english_clips):
    hf = load_model(hf_tiny_dir, dtype="float32")
    assert hf.format == "huggingface" and hf.config == tiny_en.config
    assert hf.generation.suppress_tokens == tiny_en.generation.suppress_tokens
    for clip in english_clips[:3]:
        assert decode_tokens(hf, clip.path) == decode_tokens(tiny_en, clip.path)


def test_pytorch_model_bin_directory(tiny_en, hf_tiny_dir, tmp_path, fox_clip):
    from safetensors.torch import load_file

    target = tmp_path / "pt"
    shutil.copytree(hf_tiny_dir, target)
    torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()
    assert decode_tokens(load_model(target, dtype="float32"), fox_clip.path) == decode_tokens(tiny_en, fox_clip.path)


def test_ct2_directory_split_into_parts(tiny_en, tmp_path, fox_clip):
    data = (tiny_en.source_dir / "model.bin").read_bytes()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(tiny_en.source_dir / name, tmp_path / name)
    third = len(data) // 3
    for i, chunk in enumerate([data[:third], data[third:2 * third], data[2 * third:]], start=1):
        (tmp_path / f"model.bin.part{i}").write_bytes(chunk)
    assert decode_tokens(load_model(tmp_path, dtype="float32"), fox_clip.path) == decode_tokens(tiny_en, fox_clip.path)
    (tmp_path / "model.bin.part2").unlink()
    with pytest.raises(ModelLoadError, match="model.bin.part2"):
        load_model(tmp_path)


def test_ct2_roundtrip_writer(tiny_en, tmp_path):
    out = export_ct2(tiny_en, tmp_path / "ct2")
    original = read_ct2_model([tiny_en.source_dir / "model.bin"])
    again = read_ct2_model([out / "model.bin"])
    for name, tensor in original.variables.items():
        if "/linear_0/bias" in name or "attention/linear_1/bias" in name or tensor.dim() == 0:
            continue  # k biases are zero by construction; scalars (flags) are not re-emitted
        assert torch.equal(tensor, again.variables[name]), name


def test_int8_ct2_model_is_dequantized(tiny_en, tmp_path, fox_clip):
    """A faster-whisper int8 export (weights + weight_scale) loads, dequantized, and still transcribes."""
    ct2 = state_dict_to_ct2(tiny_en.config, {k: v.float() for k, v in tiny_en.model.state_dict().items()})
    for name in list(ct2.variables):
        tensor = ct2.variables[name]
        if name.endswith("/weight") and tensor.dim() == 2 and "embeddings" not in name and name not in ct2.aliases:
            scale = 127.0 / tensor.abs().amax(dim=1).clamp(min=1e-8)
            ct2.variables[name] = torch.round(tensor * scale[:, None]).to(torch.int8)
            ct2.variables[name + "_scale"] = scale
    folder = tmp_path / "int8"
    folder.mkdir()
    write_ct2_model(folder / "model.bin", ct2)
    for extra in ("config.json", "tokenizer.json"):
        shutil.copy(tiny_en.source_dir / extra, folder / extra)
    loaded = load_model(folder)
    assert loaded.model.dtype == torch.float32
    text = loaded.tokenizer.decode(decode_tokens(loaded, fox_clip.path)).lower()
    assert "brown fox" in text and "lazy dog" in text


def test_truncated_model_bin_names_the_file(tiny_en, tmp_path):
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(tiny_en.source_dir / name, tmp_path / name)
    data = (tiny_en.source_dir / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"model\.bin is truncated or corrupt"):
        load_model(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"\x07\x00\x00\x00garbage")
    with pytest.raises(ModelLoadError, match="format version 7"):
        load_model(tmp_path)


def test_corrupt_hf_weights_and_config_are_named(hf_tiny_dir, tmp_path):
    target = tmp_path / "broken"
    shutil.copytree(hf_tiny_dir, target)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="model.safetensors is truncated or corrupt"):
        load_model(target)
    (target / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json is not valid JSON"):
        load_model(target)


def test_missing_pieces_have_actionable_errors(tiny_en, tmp_path):
    with pytest.raises(ModelLoadError, match="not a Whisper model directory"):
        load_model(tmp_path)
    shutil.copy(tiny_en.source_dir / "model.bin", tmp_path / "model.bin")
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError, match="not a local directory"):
        load_model("no-such-model")


def test_hub_id_offline_lists_aliases(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"offline.*tiny\.en, base"):
        load_model("openai/whisper-tiny")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_transcribes(dtype, fox_clip):
    loaded = load_model("tiny.en", dtype=dtype)
    assert loaded.model.dtype == dtype
    text = loaded.tokenizer.decode(decode_tokens(loaded, fox_clip.path)).lower()
    assert "brown fox" in text and "lazy dog" in text


# Parameter counts of the released checkpoints as Hugging Face reports them (proj_out tied, not counted twice).
RELEASED_PARAMETERS = {
    "tiny": 37_760_640, "base": 72_593_920, "small": 241_734_912, "medium": 763_857_920,
    "large-v2": 1_543_304_960, "large-v3": 1_543_490_560, "large-v3-turbo": 808_878_080,
}


@pytest.mark.parametrize("shape", sorted(RELEASED_PARAMETERS))
def test_every_released_shape_builds(shape):
    with torch.device("meta"):
        model = WhisperModel(WHISPER_SHAPES[shape])
    assert sum(p.numel() for p in model.parameters()) == RELEASED_PARAMETERS[shape]


def test_small_random_model_runs_with_128_mel_bins():
    from vllm_whisper.model_executor.whisper import ContiguousKVCache
    from vllm_whisper.model_executor.whisper_config import WhisperConfig

    config = WhisperConfig(num_mel_bins=128, d_model=64, encoder_layers=1, encoder_attention_heads=2,
                           decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
                           vocab_size=51866)
    model = WhisperModel(config).eval()
    with torch.inference_mode():
        encoded = model.encode(torch.randn(2, 128, 3000))
        hidden = model.decode(torch.tensor([[1, 2, 3]] * 2), torch.arange(3)[None].repeat(2, 1),
                              ContiguousKVCache(1, model.compute_cross_kv(encoded)))
        logits = model.compute_logits(hidden)
    assert encoded.shape == (2, 1500, 64) and logits.shape == (2, 3, 51866)


def test_registry_plugs_in_new_architectures():
    assert "WhisperForConditionalGeneration" in supported_architectures()
    assert resolve_model_class("WhisperForConditionalGeneration") is WhisperModel
    with pytest.raises(ValueError, match="Unsupported model architecture"):
        resolve_model_class("Wav2Vec2ForCTC")
    with pytest.raises(TypeError, match="SupportsTranscription"):
        register_model("NotASpeechModel", torch.nn.Linear)
