"""--kv-cache-dtype: on the CPU `auto` stores the cross-attention slots in bfloat16 (self-attention blocks keep the
model's dtype) and the C++ kernel reads them; `float32` keeps the engine token-for-token equal to the float32
reference decoder; GPU backends keep the model's dtype and refuse another."""

from __future__ import annotations

import pytest
import torch

from vllm_whisper import _custom_ops as ops
from vllm_whisper.audio import load_audio
from vllm_whisper.audio.features import window_features
from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.cache_dtype import resolve_kv_cache_dtype
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.engine.sampler import SamplingParams
from vllm_whisper.engine_args import EngineArgs
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.testing.engine_runs import run_to_completion
from vllm_whisper.testing.speech import word_error_rate
from vllm_whisper.transcribe.sequential import build_rules

needs_c = pytest.mark.skipif(not ops.has_cpu_cross_attention(), reason="vllm_whisper._C cross_attention not built")
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@needs_c
def test_resolution():
    assert resolve_kv_cache_dtype("auto", torch.float32, CPU) == torch.bfloat16
    assert resolve_kv_cache_dtype("auto", torch.bfloat16, CPU) == torch.bfloat16
    assert resolve_kv_cache_dtype("auto", torch.float32, CPU, "triton") == torch.float32  # the Triton interpreter
    assert resolve_kv_cache_dtype("auto", torch.float16, CUDA, "triton") == torch.float16
    assert resolve_kv_cache_dtype("float32", torch.float32, CPU) == torch.float32
    assert resolve_kv_cache_dtype("bfloat16", torch.float32, CPU) == torch.bfloat16
    with pytest.raises(ValueError, match="use --kv-cache-dtype auto"):
        resolve_kv_cache_dtype("bfloat16", torch.float16, CUDA, "triton")
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        EngineArgs(kv_cache_dtype="fp8")
    assert EngineArgs(kv_cache_dtype="float32").create_engine_config().kv_cache_dtype == "float32"


@pytest.fixture(scope="module")
def windows(english_clips):
    chosen = english_clips[:4]
    return [(window_features(load_audio(str(c.path)), 80), c.text) for c in chosen]


def decode_all(engine: LLMEngine, loaded, windows) -> list[list[int]]:
    prompt = loaded.tokenizer.sot_sequence("en", "transcribe", timestamps=False)
    params = SamplingParams(build_rules(loaded, TranscriptionParams(timestamps=False)), max_new_tokens=40)
    for i, (features, _) in enumerate(windows):
        engine.add_request(f"w{i}", features, prompt, params)
    outs = run_to_completion(engine)
    return [outs[f"w{i}"].tokens for i in range(len(windows))]


@needs_c
def test_auto_is_bfloat16_cross_slots_with_float32s_wer(tiny_en, windows):
    """Default: bfloat16 slots, float32 self-attention blocks, WER as float32's on four sentences. float32: the
    slots keep float32 (test_engine.py checks those runs token for token against the float32 reference)."""
    bf16 = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=64, num_cross_slots=8))
    assert bf16.runner.cache.cross_k[0].dtype == torch.bfloat16
    assert bf16.runner.cache.self_k[0].dtype == torch.float32
    f32 = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=64, num_cross_slots=8, kv_cache_dtype="float32"))
    assert f32.runner.cache.cross_k[0].dtype == torch.float32
    exact = decode_all(f32, tiny_en, windows)
    half = decode_all(bf16, tiny_en, windows)
    refs = [text for _, text in windows]

    def wer(rows):
        return word_error_rate(refs, [tiny_en.tokenizer.decode(t) for t in rows])

    assert wer(half) <= wer(exact) + 0.02
