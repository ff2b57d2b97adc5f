"""Attention backends: the selector's choices, the Triton backend against the torch reference on identical cache
states, and the engine end to end with each backend (identical tokens). Without CUDA the Triton backend runs in
the Triton interpreter (TRITON_INTERPRET=1, set before any kernel module is imported)."""

from __future__ import annotations

import copy
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of vllm_whisper.kernels.*

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vllm_whisper.attention.kv_cache_layout import KVCacheTensors  # noqa: E402
from vllm_whisper.attention.metadata import PagedAttentionMetadata  # noqa: E402
from vllm_whisper.attention.selector import get_attention_backend, resolve_backend_name  # noqa: E402
from vllm_whisper.attention.torch_paged import TorchPagedAttention  # noqa: E402
from vllm_whisper.config import EngineConfig  # noqa: E402
from vllm_whisper.engine.llm_engine import LLMEngine  # noqa: E402
from vllm_whisper.model_executor import whisper  # noqa: E402
from vllm_whisper.testing.engine_runs import (  # noqa: E402
    outputs_differ, random_window_jobs, run_to_completion,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- the selector -------------------------------------------------------------------------------------------------
def test_auto_picks_triton_on_cuda_and_torch_on_cpu():
    assert resolve_backend_name("auto", torch.device("cpu"), 64) == "torch"
    if torch.cuda.is_available():
        assert resolve_backend_name("auto", torch.device("cuda"), 64) == "triton"
        assert resolve_backend_name("auto", torch.device("cuda"), 80) == "torch"  # not a power of two


def test_explicit_choices_fail_clearly_where_they_cannot_run(monkeypatch):
    with pytest.raises(ValueError, match="one of"):
        resolve_backend_name("flash", DEVICE)
    with pytest.raises(ValueError, match="attention_backend"):
        EngineConfig(attention_backend="flash")
    with pytest.raises(ValueError, match="head dim"):
        resolve_backend_name("triton", DEVICE, 80)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend_name("triton", torch.device("cpu"), 64)


def test_torch_backend_is_the_reference():
    backend = get_attention_backend("torch", DEVICE)
    assert backend.name == "torch" and backend.decoder is TorchPagedAttention
    assert backend.encoder is F.scaled_dot_product_attention


def test_flags_reach_the_engine_config():
    from vllm_whisper.entrypoints.api_server import build_parser as server_parser
    from vllm_whisper.entrypoints.cli import build_parser

    args = build_parser().parse_args(["transcribe", "a.wav", "--attention-backend", "triton"])
    assert args.attention_backend == "triton"
    assert build_parser().parse_args(["transcribe", "a.wav"]).attention_backend == "auto"
    assert server_parser().parse_args(["--attention-backend", "torch"]).attention_backend == "torch"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["transcribe", "a.wav", "--attention-backend", "flash"])


def test_encoder_attention_is_passed_per_call(small_random):
    """The encoder's attention is an argument of encode, not a module global swapped around each call (which
    concurrent engines would race on): the function given runs in every encoder layer of that call only."""
    def marked(q, k, v):
        calls.append(q.shape)
        return F.scaled_dot_product_attention(q, k, v)

    calls: list = []
    model = small_random.model
    mel = torch.randn(1, model.config.num_mel_bins, 3000, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        want = model.encode(mel)
        assert not calls
        got = model.encode(mel, attention=marked)
        assert len(calls) == model.config.encoder_layers
        model.encode(mel)
    assert len(calls) == model.config.encoder_layers
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert not hasattr(whisper, "encoder_self_attention")


# --- the Triton backend against the reference on one cache state ---------------------------------------------------
def test_triton_backend_matches_reference_on_a_mixed_step():
    """Prompt rows after a preemption (cached past), fresh prompts and a one-token row in one padded batch, blocks
    scattered over the pool, cross slots out of order and shared (beams)."""
    from vllm_whisper.attention.triton_backend import TritonPagedAttention

    gen = torch.Generator().manual_seed(7)
    layers, heads, head_dim, block_size, frames = 2, 2, 64, 4, 40

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE)

    def cache():
        return KVCacheTensors([rand(30, block_size, heads, head_dim) for _ in range(layers)],
                              [rand(30, block_size, heads, head_dim) for _ in range(layers)],
                              [rand(4, heads, frames, head_dim) for _ in range(layers)],
                              [rand(4, heads, frames, head_dim) for _ in range(layers)], block_size)

    ref_cache = cache()
    tri_cache = KVCacheTensors(*[[t.clone() for t in ts] for ts in (ref_cache.self_k, ref_cache.self_v,
                                                                    ref_cache.cross_k, ref_cache.cross_v)],
                               block_size)
    tables = [[7, 2, 19], [0], [11, 3, 25, 4], [5, 6]]
    past, new = [6, 0, 9, 5], [5, 3, 6, 1]
    meta = PagedAttentionMetadata.build(tables, past, new, [2, 0, 2, 3], block_size, DEVICE)
    reference, triton_backend = TorchPagedAttention(ref_cache, meta), TritonPagedAttention(tri_cache, meta)
    for layer in range(layers):
        q, k, v = (rand(4, 6, heads, head_dim).transpose(1, 2) for _ in range(3))
        want, got = reference.self_attend(layer, q, k, v), triton_backend.self_attend(layer, q, k, v)
        for b, n in enumerate(new):  # padding rows are ignored by the runner
            torch.testing.assert_close(got[b, :, :n], want[b, :, :n], atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(tri_cache.self_k[layer], ref_cache.self_k[layer], atol=0, rtol=0)
        torch.testing.assert_close(tri_cache.self_v[layer], ref_cache.self_v[layer], atol=0, rtol=0)
        q = rand(4, 6, heads, head_dim).transpose(1, 2)
        torch.testing.assert_close(triton_backend.cross_attend(layer, q), reference.cross_attend(layer, q),
                                   atol=2e-5, rtol=2e-5)
        q = rand(4, 1, heads, head_dim).transpose(1, 2)
        torch.testing.assert_close(triton_backend.cross_attend(layer, q), reference.cross_attend(layer, q),
                                   atol=2e-5, rtol=2e-5)


def test_encoder_through_the_triton_kernel_matches_sdpa(small_random):
    backend = get_attention_backend("triton", DEVICE, small_random.config.head_dim)
    model = copy.deepcopy(small_random.model).to(DEVICE) if DEVICE.type == "cuda" else small_random.model
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    with torch.inference_mode():
        want = model.encode(mel)
        got = model.encode(mel, attention=backend.encoder)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# --- the engine end to end with each backend -----------------------------------------------------------------------
def run_engine(loaded, backend: str, jobs, **config):
    engine = LLMEngine(loaded, EngineConfig(attention_backend=backend, **config))
    assert engine.runner.backend.name == backend
    finished = run_to_completion(engine, jobs)
    stats = engine.stats
    assert stats.encoder_runs == len(jobs) and stats.num_free_kv_blocks == stats.num_kv_blocks
    return finished


def test_engine_tokens_identical_with_torch_and_triton(small_random_kernels):
    """Five greedy requests and a two-beam one on two cross slots: later requests are admitted while others
    decode (prefill and decode groups in one step, slots reused out of order), beams share blocks and a slot."""
    jobs = random_window_jobs(small_random_kernels, 6, seed=5)
    config = dict(num_kv_blocks=48, num_cross_slots=2, block_size=4, enforce_eager=True)
    want = run_engine(small_random_kernels, "torch", jobs, **config)
    got = run_engine(small_random_kernels, "triton", jobs, **config)
    assert not outputs_differ(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_engine_on_cuda_with_each_backend(dtype, tiny_en_tokenizer):
    """tiny.en's shape with random weights (a GPU machine may hold only the tokenizer), triton with CUDA graphs."""
    from vllm_whisper.model_executor.whisper_config import WHISPER_SHAPES
    from vllm_whisper.testing.random_model import random_model

    loaded = random_model(WHISPER_SHAPES["tiny.en"], tiny_en_tokenizer, getattr(torch, dtype), device="cuda")
    jobs = random_window_jobs(loaded, 12, seed=9)
    pools = dict(num_kv_blocks=1024, num_cross_slots=12)  # fixed pools: no GPU memory profiling between engines
    want = run_engine(loaded, "torch", jobs, **pools)
    got = run_engine(loaded, "triton", jobs, **pools)
    if dtype == "float32":
        assert not outputs_differ(got, want)
    else:  # fp16 rounding differs between kernels; greedy paths may part late, but mostly agree
        same = sum(got[r].tokens == want[r].tokens for r in want)
        assert same >= len(want) - 2
    assert LLMEngine(loaded, EngineConfig(**pools)).runner.backend.name == "triton"  # auto
