"""Decode steps through fixed-shape buffers at bucketed batch sizes (engine/cuda_graphs.py).

On the CPU the buffers and forward run without capture under the Triton interpreter: the padding rows, the
fixed-width block tables and the staging must give the eager engine's tokens exactly. On a GPU the graphs are
captured and replayed, and the engine's tokens must match its --enforce-eager run.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of vllm_whisper.kernels.*

import pytest  # noqa: E402

from vllm_whisper.config import EngineConfig  # noqa: E402
from vllm_whisper.engine.cuda_graphs import (  # noqa: E402
    DecodeGraphs, DecodeRow, bucket_for, capture_batch_sizes,
)
from vllm_whisper.engine.llm_engine import LLMEngine  # noqa: E402
from vllm_whisper.testing.engine_runs import (  # noqa: E402
    outputs_differ, random_window_jobs, run_to_completion,
)


def test_buckets_cover_every_batch_up_to_max_num_seqs():
    assert capture_batch_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert capture_batch_sizes(6) == [1, 2, 4, 6]
    assert capture_batch_sizes(1) == [1]
    assert capture_batch_sizes(20) == [1, 2, 4, 8, 16, 20]
    with pytest.raises(ValueError, match="at least 1"):
        capture_batch_sizes(0)
    sizes = capture_batch_sizes(64)
    assert [bucket_for(b, sizes) for b in (1, 2, 3, 5, 9, 63, 64)] == [1, 2, 4, 8, 16, 64, 64]
    assert bucket_for(65, sizes) is None


POOLS = dict(num_kv_blocks=96, num_cross_slots=4, block_size=4)


def run(loaded, jobs, batch_sizes: list[int] | None, **config):
    """The Triton engine eagerly (batch_sizes None) or with decode steps through the graph buffers."""
    engine = LLMEngine(loaded, EngineConfig(attention_backend="triton", enforce_eager=True, **POOLS, **config))
    if batch_sizes is not None:
        engine.runner.graphs = DecodeGraphs(loaded.model, engine.runner.cache, batch_sizes,
                                            capture=loaded.model.device.type == "cuda")
    finished = run_to_completion(engine, jobs)
    stats = engine.stats
    assert stats.num_free_kv_blocks == stats.num_kv_blocks and stats.num_free_cross_slots == stats.num_cross_slots
    return finished, engine.runner.counters


def test_padded_bucketed_decode_gives_the_eager_tokens(small_random_kernels):
    """Six requests on four cross slots: decode batches of 1 to 5 sequences run in buckets 1, 2, 4 and 8 (padding
    rows in most steps), requests join while others decode, beams share blocks; prefill stays eager."""
    jobs = random_window_jobs(small_random_kernels, 6, seed=11, new_tokens=(4, 20))
    want, eager = run(small_random_kernels, jobs, None)
    got, counters = run(small_random_kernels, jobs, [1, 2, 4, 8])
    assert not outputs_differ(got, want)
    assert eager.graph_steps == 0
    assert counters.graph_steps > 0 and counters.eager_steps > 0  # decode groups replayed, prefill groups eager
    assert counters.graph_steps + counters.eager_steps == eager.eager_steps
    assert counters.decoder_tokens == eager.decoder_tokens


def test_batches_larger_than_every_bucket_run_eagerly(small_random_kernels):
    jobs = random_window_jobs(small_random_kernels, 4, seed=12, new_tokens=(4, 20), beam_last=False)
    want, _ = run(small_random_kernels, jobs, None, max_num_seqs=4)
    got, counters = run(small_random_kernels, jobs, [1], max_num_seqs=4)
    assert not outputs_differ(got, want)
    assert counters.graph_steps > 0  # the last request decoding alone


def test_padding_rows_write_nothing_to_the_cache(small_random_kernels):
    """One real row in a bucket of four: only that row's slot changes in every layer's self-attention cache."""
    engine = LLMEngine(small_random_kernels, EngineConfig(attention_backend="triton", enforce_eager=True, **POOLS))
    cache = engine.runner.cache
    for layer in cache.self_k + cache.self_v + cache.cross_k + cache.cross_v:
        layer.normal_()
    before = [t.clone() for t in cache.self_k + cache.self_v + cache.cross_k + cache.cross_v]
    graphs = DecodeGraphs(small_random_kernels.model, cache, [4], capture=False)
    position, table = 6, [9, 3]  # slot 3 * 4 + 2
    logits = graphs.run([DecodeRow(token=50, position=position, block_table=table, cross_slot=2)])
    assert logits.shape == (1, small_random_kernels.config.vocab_size) and torch.isfinite(logits).all()
    after = cache.self_k + cache.self_v + cache.cross_k + cache.cross_v
    for old, new in zip(before, after):
        changed = (old != new).flatten(2).any(-1)  # per (block, offset) for self, (slot, head) for cross
        if new.shape[1] == cache.block_size:
            assert changed.nonzero().tolist() == [[3, 2]]
        else:
            assert not changed.any()


def test_graph_inputs_are_checked(small_random_kernels):
    engine = LLMEngine(small_random_kernels, EngineConfig(attention_backend="triton", enforce_eager=True, **POOLS))
    graphs = DecodeGraphs(small_random_kernels.model, engine.runner.cache, [2], capture=False)
    row = DecodeRow(token=1, position=0, block_table=[0], cross_slot=0)
    with pytest.raises(ValueError, match="exceeds the largest captured size 2"):
        graphs.run([row] * 3)
    with pytest.raises(ValueError, match="more than the 112 a decoder context"):
        graphs.run([DecodeRow(token=1, position=0, block_table=list(range(113)), cross_slot=0)])
    with pytest.raises(ValueError, match="at least one"):
        DecodeGraphs(small_random_kernels.model, engine.runner.cache, [], capture=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA device"):
            DecodeGraphs(small_random_kernels.model, engine.runner.cache, [1], capture=True)


def test_engine_captures_only_on_cuda_with_triton(small_random_kernels):
    loaded = small_random_kernels
    assert LLMEngine(loaded, EngineConfig(attention_backend="torch", **POOLS)).runner.graphs is None
    eager = EngineConfig(attention_backend="triton", enforce_eager=True, **POOLS)
    assert LLMEngine(loaded, eager).runner.graphs is None
    captured = LLMEngine(loaded, EngineConfig(attention_backend="triton", max_num_seqs=8, **POOLS)).runner.graphs
    if loaded.model.device.type == "cuda":
        assert captured is not None and captured.captured and captured.batch_sizes == [1, 2, 4, 8]
    else:
        assert captured is None


def test_enforce_eager_flag_reaches_the_engine_config():
    from vllm_whisper.entrypoints.api_server import build_parser as server_parser
    from vllm_whisper.entrypoints.cli import build_parser

    assert build_parser().parse_args(["transcribe", "a.wav", "--enforce-eager"]).enforce_eager
    assert not build_parser().parse_args(["transcribe", "a.wav"]).enforce_eager
    assert server_parser().parse_args(["--enforce-eager"]).enforce_eager
    assert server_parser().parse_args(["--max-encoder-windows-per-step", "1"]).max_encoder_windows_per_step == 1
    assert server_parser().parse_args([]).max_encoder_windows_per_step is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_captured_graphs_match_eager_on_cuda(dtype, tiny_en_tokenizer):
    """tiny.en's shape (random weights) on the GPU: the engine captures graphs by default; 12 requests (one with
    beams) give the tokens of its --enforce-eager run, and decode steps were replays."""
    from vllm_whisper.model_executor.whisper_config import WHISPER_SHAPES
    from vllm_whisper.testing.random_model import random_model

    loaded = random_model(WHISPER_SHAPES["tiny.en"], tiny_en_tokenizer, getattr(torch, dtype), device="cuda")
    jobs = random_window_jobs(loaded, 12, seed=13, new_tokens=(4, 20))
    pools = dict(num_kv_blocks=1024, num_cross_slots=12, max_num_seqs=16)
    eager_engine = LLMEngine(loaded, EngineConfig(enforce_eager=True, **pools))
    assert eager_engine.runner.graphs is None
    want = run_to_completion(eager_engine, jobs)
    engine = LLMEngine(loaded, EngineConfig(**pools))
    assert engine.runner.graphs is not None and engine.runner.graphs.captured
    assert engine.runner.graphs.batch_sizes == [1, 2, 4, 8, 16]
    got = run_to_completion(engine, jobs)
    assert engine.runner.counters.graph_steps > 0
    same = sum(got[r].tokens == want[r].tokens for r in want)
    if dtype == "float32":
        assert same == len(want)
    else:  # a padded bucket can split the cross-attention frames differently: fp16 rounding may part a path late
        assert same >= len(want) - 2
