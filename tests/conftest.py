"""Shared fixtures: real models (tiny.en, base), synthetic speech with known text, the transformers oracle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vllm_whisper.model_executor.aliases import tokenizer_dir
from vllm_whisper.model_executor.loader import LoadedModel, load_model
from vllm_whisper.model_executor.whisper_config import WHISPER_SHAPES, WhisperConfig
from vllm_whisper.testing.speech import Utterance, english_corpus, synthesize
from vllm_whisper.tokenizer import WhisperTokenizer, load_tokenizer

torch.set_num_threads(2)


WALKTHROUGH_COMMAND = "bash scripts/test.sh -q --walkthrough tests/test_readme_walkthrough.py"
# CI's second step: the tooling checks and the walkthrough, outside the default suite's 20-minute budget.
SECOND_STEP_COMMAND = 'bash scripts/test.sh -q --tooling --walkthrough -m "tooling or walkthrough"'


def pytest_addoption(parser):
    parser.addoption("--walkthrough", action="store_true",
                     help="also run the README walkthrough (every README command on a fresh clone; minutes)")
    parser.addoption("--tooling", action="store_true",
                     help="also run the build and benchmark tooling checks (CUDA / Triton cross-compiles, benchmark "
                          "smoke runs; minutes)")


def pytest_collection_modifyitems(config, items):
    skip_walkthrough = pytest.mark.skip(reason=f"the README walkthrough runs on its own (CI's second step): "
                                               f"{WALKTHROUGH_COMMAND}")
    skip_tooling = pytest.mark.skip(reason=f"a build or benchmark tooling check; runs in CI's second step: "
                                           f"{SECOND_STEP_COMMAND}")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "walkthrough" in item.keywords and not config.getoption("--walkthrough"):
            item.add_marker(skip_walkthrough)
        if "tooling" in item.keywords and not config.getoption("--tooling"):
            item.add_marker(skip_tooling)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_en() -> LoadedModel:
    return load_model("tiny.en", dtype="float32")


@pytest.fixture(scope="session")
def base_model() -> LoadedModel:
    return load_model("base", dtype="float32")


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="session")
def english_clips(speech_dir) -> list[Utterance]:
    """24 Harvard sentences across flite (4 voices), festival and espeak-ng."""
    return english_corpus(speech_dir / "english", count=24)


@pytest.fixture(scope="session")
def fox_clip(speech_dir) -> Utterance:
    return synthesize("The quick brown fox jumps over the lazy dog.", speech_dir / "fox.wav", "flite", "slt")


@pytest.fixture(scope="session")
def hf_tiny_dir(tiny_en, tmp_path_factory) -> Path:
    """The tiny.en CTranslate2 weights written out as a Hugging Face directory."""
    from vllm_whisper.model_executor.export import export_hf

    return export_hf(tiny_en, tmp_path_factory.mktemp("hf") / "whisper-tiny.en")


@pytest.fixture(scope="session")
def hf_oracle(hf_tiny_dir):
    """transformers' WhisperForConditionalGeneration on the same weights, fp32 on the CPU."""
    from transformers import WhisperForConditionalGeneration

    return WhisperForConditionalGeneration.from_pretrained(hf_tiny_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tiny_en_tokenizer() -> WhisperTokenizer:
    """tiny.en's tokenizer alone (no weights): what random-weight models need, also on a GPU machine handed only
    the tokenizer files (scripts/gpu_bundle.py)."""
    return load_tokenizer(tokenizer_dir("tiny.en"), WHISPER_SHAPES["tiny.en"].vocab_size)


def small_random_config() -> WhisperConfig:
    return WhisperConfig(num_mel_bins=80, d_model=64, encoder_layers=1, encoder_attention_heads=2,
                         decoder_layers=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
                         vocab_size=WHISPER_SHAPES["tiny.en"].vocab_size)


@pytest.fixture(scope="session")
def small_random(tiny_en_tokenizer) -> LoadedModel:
    """A 2-layer random-weight Whisper with tiny.en's vocabulary: fast enough for thousands of engine requests."""
    from vllm_whisper.testing.random_model import random_model

    return random_model(small_random_config(), tiny_en_tokenizer, seed=3)


@pytest.fixture(scope="session")
def small_random_kernels(tiny_en_tokenizer) -> LoadedModel:
    """small_random where the Triton kernels run: on the GPU when there is one, else on the CPU (interpreter)."""
    from vllm_whisper.testing.random_model import random_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return random_model(small_random_config(), tiny_en_tokenizer, seed=3, device=device)
