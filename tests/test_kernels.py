"""Every Triton kernel against its pure-torch reference on fresh random inputs, with every output buffer poisoned
(NaN) first so a missed write fails. Without CUDA the kernels run in the Triton interpreter (TRITON_INTERPRET=1,
set below before any kernel module is imported) at small shapes; the `gpu` tests run real Whisper shapes
(1500 frames, head dim 64, up to 20 heads) compiled, in fp16, bf16 (where the GPU has it) and fp32. Without a GPU,
every kernel is still compiled ahead of time for compute capability 7.5, 8.0 and 9.0 and checked for spills."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of vllm_whisper.kernels.*

import pytest  # noqa: E402

from vllm_whisper.kernels import _common  # noqa: E402
from vllm_whisper.kernels.cross_attention import (  # noqa: E402
    cross_attention, cross_attention_reference, plan_splits,
)
from vllm_whisper.kernels.encoder_attention import (  # noqa: E402
    EncoderAttentionConfig, encoder_attention, encoder_attention_reference,
)
from vllm_whisper.kernels.kv_store import store_kv, store_kv_reference  # noqa: E402
from vllm_whisper.kernels.paged_attention import (  # noqa: E402
    paged_attention_decode, paged_attention_prefill, paged_attention_reference,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
SMALL_DTYPES = [torch.float32, torch.float16]  # bf16 dots are wrong in Triton 3.6's interpreter: GPU only


def gpu_dtypes() -> list:
    dtypes = [torch.float16, torch.float32]
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        dtypes.append(torch.bfloat16)
    return dtypes


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    monkeypatch.setattr(_common, "POISON_OUTPUTS", True)


@pytest.fixture
def gen() -> torch.Generator:
    seed = torch.seed() % 2**31  # fresh inputs on every run
    print(f"input seed {seed}")  # shown with a failure
    return torch.Generator().manual_seed(seed)


def randn(gen, *shape, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype=dtype, device=DEVICE)


def heads_view(gen, batch, tokens, heads, head_dim, dtype, count=3):
    """count tensors shaped like the model's split_heads output: (B, H, T, D) views of (B, T, H, D) memory."""
    packed = randn(gen, batch, tokens, count, heads, head_dim, dtype=dtype)
    return [packed[:, :, i].transpose(1, 2) for i in range(count)]


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert not torch.isnan(got).any(), "the kernel left poisoned (unwritten) elements"
    torch.testing.assert_close(got.float(), want.float(), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


# --- encoder self-attention ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize("frames,head_dim,block", [(45, 64, 16), (48, 16, 16), (40, 64, None)])
def test_encoder_attention(gen, dtype, frames, head_dim, block):
    q, k, v = heads_view(gen, 2, frames, 2, head_dim, dtype)
    config = EncoderAttentionConfig(block, block, 4, 1) if block else None
    out = encoder_attention(q, k, v, config=config)
    assert out.shape == q.shape and out.transpose(1, 2).is_contiguous()
    assert_close(out, encoder_attention_reference(q, k, v), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", gpu_dtypes())
@pytest.mark.parametrize("batch,heads", [(1, 6), (4, 20)])
def test_encoder_attention_whisper_shapes(gen, dtype, batch, heads):
    q, k, v = heads_view(gen, batch, 1500, heads, 64, dtype)
    assert_close(encoder_attention(q, k, v), encoder_attention_reference(q, k, v), dtype)


# --- decoder self-attention over the paged cache ------------------------------------------------------------------
def paged_case(gen, dtype, past_lens, new_lens, heads, head_dim, block_size, num_blocks):
    """Caches full of random values and block tables over a random permutation of the blocks."""
    k_cache = randn(gen, num_blocks, block_size, heads, head_dim, dtype=dtype)
    v_cache = randn(gen, num_blocks, block_size, heads, head_dim, dtype=dtype)
    past = torch.tensor(past_lens, dtype=torch.int32, device=DEVICE)
    context = past + torch.tensor(new_lens, dtype=torch.int32, device=DEVICE)
    width = -(-int(context.max()) // block_size)
    order = torch.randperm(num_blocks, generator=gen)[: len(past_lens) * width]
    tables = order.view(len(past_lens), width).to(torch.int32).to(DEVICE)
    return k_cache, v_cache, tables, past, context


@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize("block_m", [16, None])
def test_paged_prefill(gen, dtype, block_m):
    # a fresh prompt, a prompt after a preemption (cached past), one token and a long row: padding rows included
    past_lens, new_lens = [0, 5, 17, 3], [7, 20, 1, 13]
    k_cache, v_cache, tables, past, context = paged_case(gen, dtype, past_lens, new_lens, 2, 64, 4, 40)
    (q,) = heads_view(gen, 4, max(new_lens), 2, 64, dtype, count=1)
    out = paged_attention_prefill(q, k_cache, v_cache, tables, past, context, block_m=block_m, block_n=16)
    assert_close(out, paged_attention_reference(q, k_cache, v_cache, tables, past, context), dtype)


@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize("block_n", [8, None])
def test_paged_decode(gen, dtype, block_n):
    context_lens = [1, 16, 17, 40, 33]  # one key, a full block, one past a block boundary, several blocks
    past_lens = [c - 1 for c in context_lens]
    k_cache, v_cache, tables, past, context = paged_case(gen, dtype, past_lens, [1] * 5, 2, 64, 16, 24)
    (q,) = heads_view(gen, 5, 1, 2, 64, dtype, count=1)
    out = paged_attention_decode(q, k_cache, v_cache, tables, context, block_n=block_n)
    assert_close(out, paged_attention_reference(q, k_cache, v_cache, tables, past, context), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", gpu_dtypes())
def test_paged_attention_whisper_shapes(gen, dtype):
    batch, heads = 32, 20
    past_lens = torch.randint(0, 400, (batch,), generator=gen).tolist()
    new_lens = torch.randint(1, 48, (batch,), generator=gen).tolist()
    k_cache, v_cache, tables, past, context = paged_case(gen, dtype, past_lens, new_lens, heads, 64, 16, 1200)
    (q,) = heads_view(gen, batch, max(new_lens), heads, 64, dtype, count=1)
    out = paged_attention_prefill(q, k_cache, v_cache, tables, past, context)
    assert_close(out, paged_attention_reference(q, k_cache, v_cache, tables, past, context), dtype)
    (q1,) = heads_view(gen, batch, 1, heads, 64, dtype, count=1)
    out = paged_attention_decode(q1, k_cache, v_cache, tables, context)
    assert_close(out, paged_attention_reference(q1, k_cache, v_cache, tables, context - 1, context), dtype)


# --- cross-attention over the slots (flash-decoding) --------------------------------------------------------------
@pytest.mark.parametrize("dtype", SMALL_DTYPES)
@pytest.mark.parametrize("tokens", [1, 5, 20])
@pytest.mark.parametrize("num_splits", [1, 3, None])
def test_cross_attention(gen, dtype, tokens, num_splits):
    frames, heads = 100, 2
    cross_k = randn(gen, 5, heads, frames, 64, dtype=dtype)
    cross_v = randn(gen, 5, heads, frames, 64, dtype=dtype)
    slots = torch.tensor([3, 0, 3, 4], dtype=torch.int32, device=DEVICE)  # out of order, one shared (beams)
    (q,) = heads_view(gen, 4, tokens, heads, 64, dtype, count=1)
    out = cross_attention(q, cross_k, cross_v, slots, num_splits=num_splits, block_n=16)
    assert_close(out, cross_attention_reference(q, cross_k, cross_v, slots), dtype)


@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("num_splits", [1, 4])
def test_cross_attention_reads_only_each_slots_frames(gen, tokens, num_splits):
    """Per-row lengths (a shortened audio context): each row attends over exactly its slot's first lens[b] frames,
    equal to full attention over those frames alone; splits past a short row's frames are empty and weigh nothing.
    The frames past each length hold NaN, so reading one of them would show."""
    frames, heads, dtype = 100, 2, torch.float32
    cross_k = randn(gen, 5, heads, frames, 64, dtype=dtype)
    cross_v = randn(gen, 5, heads, frames, 64, dtype=dtype)
    slots = torch.tensor([3, 0, 4], dtype=torch.int32, device=DEVICE)
    lens = torch.tensor([17, 100, 40], dtype=torch.int32, device=DEVICE)
    for slot, n in zip(slots.tolist(), lens.tolist()):
        cross_k[slot, :, n:] = float("nan")
        cross_v[slot, :, n:] = float("nan")
    (q,) = heads_view(gen, 3, tokens, heads, 64, dtype, count=1)
    out = cross_attention(q, cross_k, cross_v, slots, num_splits=num_splits, block_n=16, lens=lens)
    for b, (slot, n) in enumerate(zip(slots.tolist(), lens.tolist())):
        alone = cross_attention_reference(q[b:b + 1], cross_k[slot:slot + 1, :, :n], cross_v[slot:slot + 1, :, :n],
                                          torch.zeros(1, dtype=torch.int32, device=DEVICE))
        assert_close(out[b:b + 1], alone, dtype)


def test_split_plan_fills_the_device_in_whole_tiles():
    splits, per_split = plan_splits(rows=12, frames=1500, block_n=64, device=torch.device("cpu"))  # 1 "SM"
    assert (splits, per_split) == (1, 1536)
    for rows in (1, 8, 12, 96, 768, 5000):
        splits, per_split = plan_splits(rows, 1500, 64, DEVICE)
        assert per_split % 64 == 0 and (splits - 1) * per_split < 1500 <= splits * per_split


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", gpu_dtypes())
@pytest.mark.parametrize("batch,tokens", [(1, 1), (8, 1), (64, 1), (4, 3), (2, 40)])
def test_cross_attention_whisper_shapes(gen, dtype, batch, tokens):
    heads, slots_total = 20, 70
    cross_k = randn(gen, slots_total, heads, 1500, 64, dtype=dtype)
    cross_v = randn(gen, slots_total, heads, 1500, 64, dtype=dtype)
    slots = torch.randperm(slots_total, generator=gen)[:batch].to(torch.int32).to(DEVICE)
    (q,) = heads_view(gen, batch, tokens, heads, 64, dtype, count=1)
    assert_close(cross_attention(q, cross_k, cross_v, slots), cross_attention_reference(q, cross_k, cross_v, slots),
                 dtype)


# --- fused K/V store -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,cache_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                               (torch.float32, torch.float16)])
@pytest.mark.parametrize("heads", [2, 3])
def test_store_kv(gen, dtype, cache_dtype, heads):
    k, v = heads_view(gen, 3, 5, heads, 64, dtype, count=2)
    slot_mapping = torch.full((3, 5), -1, dtype=torch.long)
    slot_mapping[0, :4] = torch.tensor([3, 9, 10, 11])  # a prompt crossing a block boundary
    slot_mapping[1, 0] = 0  # one decode token in slot 0
    slot_mapping[2] = torch.tensor([40, 41, 42, 43, 44])  # the last block
    slot_mapping = slot_mapping.to(DEVICE)
    # poisoned caches: every slot not written must still be NaN afterwards
    k_cache = torch.full((12, 4, heads, 64), float("nan"), dtype=cache_dtype, device=DEVICE)
    v_cache = torch.full_like(k_cache, float("nan"))
    want_k, want_v = k_cache.clone(), v_cache.clone()
    store_kv(k, v, k_cache, v_cache, slot_mapping)
    store_kv_reference(k, v, want_k, want_v, slot_mapping)
    assert torch.equal(k_cache.isnan(), want_k.isnan()) and torch.equal(v_cache.isnan(), want_v.isnan())
    assert torch.equal(k_cache.nan_to_num(), want_k.nan_to_num())
    assert torch.equal(v_cache.nan_to_num(), want_v.nan_to_num())


@pytest.mark.gpu
def test_store_kv_whisper_shapes(gen):
    k, v = heads_view(gen, 64, 1, 20, 64, torch.float16, count=2)
    k_cache = torch.full((300, 16, 20, 64), float("nan"), dtype=torch.float16, device=DEVICE)
    v_cache = torch.full_like(k_cache, float("nan"))
    slot_mapping = torch.randperm(300 * 16, generator=gen)[:64].view(64, 1).to(DEVICE)
    want_k, want_v = k_cache.clone(), v_cache.clone()
    store_kv(k, v, k_cache, v_cache, slot_mapping)
    store_kv_reference(k, v, want_k, want_v, slot_mapping)
    assert torch.equal(k_cache.nan_to_num(), want_k.nan_to_num()) and torch.equal(v_cache.isnan(), want_v.isnan())


# --- argument checks ---------------------------------------------------------------------------------------------
def test_bad_arguments_are_refused(gen):
    q, k, v = heads_view(gen, 1, 8, 2, 48, torch.float32)
    with pytest.raises(ValueError, match="head dim"):
        encoder_attention(q, k, v)
    q, k, v = heads_view(gen, 1, 8, 2, 64, torch.float32)
    with pytest.raises(ValueError, match="dtype"):
        encoder_attention(q.double(), k.double(), v.double())
    caches = randn(gen, 4, 4, 2, 64), randn(gen, 4, 4, 2, 64)
    table = torch.zeros(1, 2, dtype=torch.int32, device=DEVICE)
    lengths = torch.ones(1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="one query token"):
        paged_attention_decode(q, *caches, table, lengths)



# --- ahead-of-time compilation for real GPUs (no GPU needed) ---------------------------------------------------------
@pytest.mark.tooling
def test_kernels_compile_for_turing_ampere_hopper():
    """Every kernel lowers to a cubin for compute capability 7.5, 8.0 and 9.0 at its launch tiles, and the decode
    kernels (and, with tensor cores, the encoder) do not spill registers. A subprocess, since compiling needs
    Triton out of interpreter mode."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "vllm_whisper.kernels.compile_check", "75", "80", "90"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" ok ") >= 3 * 7


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA run is a real benchmark, not a smoke test")
def test_benchmark_on_cpu_times_torch_only_and_exits_zero(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "benchmark_kernels.py")
    out = tmp_path / "kernels.json"
    result = subprocess.run([sys.executable, script, "--model", "tiny", "--batch", "1", "--repeats", "1",
                             "--context", "32", "--prompt-tokens", "4", "--json", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Triton needs CUDA" in result.stdout and "Measured ceilings" in result.stdout
    assert '"triton": false' in out.read_text()
