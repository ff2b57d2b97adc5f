"""The whisper.cpp benchmark peer: our ggml converter writes a file that reads back as written, q8_0 stays within its
error bound, and whisper.cpp (pywhispercpp) on the converted f16 weights says what our engine says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))

from convert_to_ggml import convert_loaded, openai_name, vocabulary  # noqa: E402
from ggml_format import GGML_MAGIC, GGML_TYPE, dequantize_q8_0, quantize_q8_0, read_ggml_summary  # noqa: E402


@pytest.fixture(scope="module")
def f16_file(tiny_en, tmp_path_factory) -> Path:
    return convert_loaded(tiny_en, tmp_path_factory.mktemp("ggml") / "tiny.en-f16.bin", "f16")


def test_converted_file_reads_back(tiny_en, f16_file):
    summary = read_ggml_summary(f16_file)
    config = tiny_en.config
    assert f16_file.read_bytes()[:4] == GGML_MAGIC.to_bytes(4, "little")
    assert summary.hparams.as_tuple() == (51864, 1500, 384, 6, 4, 448, 384, 6, 4, 80, 1)
    assert summary.mel_filters.shape == (80, 201) and summary.mel_filters.max() > 0
    assert len(summary.vocab) == tiny_en.tokenizer.eot == 50256
    assert summary.vocab[tiny_en.tokenizer.encode(" hello")[0]] == b" hello"
    assert len(summary.tensors) == len(tiny_en.model.state_dict())
    assert summary.tensors["encoder.conv1.weight"] == ((384, 80, 3), GGML_TYPE["f16"])
    assert summary.tensors["encoder.conv1.bias"] == ((384, 1), GGML_TYPE["f32"])
    assert summary.tensors["encoder.positional_embedding"] == ((1500, 384), GGML_TYPE["f32"])
    assert summary.tensors["decoder.token_embedding.weight"] == ((config.vocab_size, 384), GGML_TYPE["f16"])
    assert summary.tensors["decoder.blocks.3.cross_attn.key.weight"] == ((384, 384), GGML_TYPE["f16"])
    assert summary.tensors["decoder.blocks.3.cross_attn_ln.bias"] == ((384,), GGML_TYPE["f32"])


def test_names_and_vocabulary_bytes(tiny_en):
    assert openai_name("encoder.layers.2.fc2.bias") == "encoder.blocks.2.mlp.2.bias"
    assert openai_name("decoder.layers.0.encoder_attn.v_proj.weight") == "decoder.blocks.0.cross_attn.value.weight"
    words = vocabulary(tiny_en.tokenizer)
    assert all(isinstance(w, bytes) and w for w in words)
    assert b"".join(words[t] for t in tiny_en.tokenizer.encode(" café, naïve")).decode("utf-8") == " café, naïve"


def test_q8_0_round_trip_error_is_bounded():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(8, 64)).astype(np.float32)
    values[0, :32] = 0.0  # an all-zero block must come back as zeros, not NaN
    packed = quantize_q8_0(values)
    assert len(packed) == 16 * 34
    restored = dequantize_q8_0(packed, values.shape)
    step = np.abs(values.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(restored - values).reshape(-1, 32) <= step * 0.5 + 1e-3 * step + 1e-12)
    assert np.all(restored[0, :32] == 0.0)


@pytest.mark.skipif(importlib.util.find_spec("pywhispercpp") is None,
                    reason="pywhispercpp is not installed: pip install 'pywhispercpp>=1.5'")
def test_whisper_cpp_transcribes_like_our_engine(tiny_en, f16_file, tmp_path):
    from whisper_cpp import load_whisper_cpp, transcribe_files

    from vllm_whisper.audio import load_audio
    from vllm_whisper.config import EngineConfig
    from vllm_whisper.engine.llm_engine import LLMEngine
    from vllm_whisper.params import TranscriptionParams
    from vllm_whisper.testing.speech import english_corpus, normalize_text
    from vllm_whisper.transcribe.batch import transcribe_batch

    clip = english_corpus(tmp_path, 2)[1]  # "Glue the sheet to the dark blue background." (festival)
    audio = load_audio(clip.path)
    engine = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=64, num_cross_slots=2))
    ours = transcribe_batch(engine, [audio], TranscriptionParams(language="en", timestamps=False,
                                                                 condition_on_previous_text=False))[0].text.strip()
    run = transcribe_files(load_whisper_cpp(f16_file, threads=2), [audio])
    assert normalize_text(ours) == normalize_text(clip.text)
    assert run.texts == [ours] and run.tokens >= 9 and run.wall_s > 0
