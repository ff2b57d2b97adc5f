"""The C++ ops of vllm_whisper._C against their torch references, their fake (meta) implementations, the torch
fallbacks, and an nvcc compile-only check of the CUDA sources.

Cache writes must be bit-exact (outputs start poisoned with NaN); the logits op must give the same -inf
positions as the batched torch rules (sampling/batched.py) and the per-row reference (sampling/reference.py), and
leave every other value untouched.
The C++ tests skip when the extension is not built (the reason is printed); with VLLM_WHISPER_REQUIRE_EXT=1
(set by .ci/run) a missing extension or nvcc fails instead.
"""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vllm_whisper import _custom_ops as ops
from vllm_whisper.sampling.batched import apply_rules, apply_rules_packed_
from vllm_whisper.sampling.reference import apply_rules_row
from vllm_whisper.sampling.rules import LogitsRules

ROOT = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("VLLM_WHISPER_REQUIRE_EXT", "0") not in ("", "0")
needs_c = pytest.mark.skipif(not ops.HAS_C_EXTENSION, reason=f"vllm_whisper._C not built: {ops.C_EXTENSION_ERROR}")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def test_extension_loaded():
    """Reports the backend; fails where the extension is required (CI) but missing."""
    print(ops.backend())
    if not ops.HAS_C_EXTENSION:
        if REQUIRE:
            pytest.fail(f"VLLM_WHISPER_REQUIRE_EXT is set but {ops.backend()}")
        pytest.skip(ops.backend())
    assert torch.ops.vllm_whisper.reshape_and_cache.default is not None


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN poison included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.view(INT_VIEW[a.dtype]), b.view(INT_VIEW[b.dtype]))


def poisoned(shape, dtype) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype)


# --- reshape_and_cache (self-attention, 16-token blocks) --------------------------------------------------------

def random_slots(gen: torch.Generator, tokens: int, num_slots: int, pad_every: int) -> torch.Tensor:
    slots = torch.randperm(num_slots, generator=gen)[:tokens]
    if pad_every:
        slots[::pad_every] = -1
    return slots


@needs_c
@pytest.mark.parametrize("src_dtype", DTYPES)
@pytest.mark.parametrize("cache_dtype", DTYPES)
@pytest.mark.parametrize("num_blocks,heads,head_dim,tokens", [(4, 6, 64, 37), (9, 8, 80, 100), (2, 1, 16, 1)])
def test_reshape_and_cache_matches_reference(src_dtype, cache_dtype, num_blocks, heads, head_dim, tokens):
    gen = torch.Generator().manual_seed(num_blocks * 1000 + heads * 10 + tokens)
    block_size = 16
    key = torch.randn(tokens, heads, head_dim, generator=gen).to(src_dtype)
    value = torch.randn(tokens, heads, head_dim, generator=gen).to(src_dtype)
    slots = random_slots(gen, tokens, num_blocks * block_size, pad_every=5 if tokens > 1 else 0)
    shape = (num_blocks, block_size, heads, head_dim)
    expected_k, expected_v = poisoned(shape, cache_dtype), poisoned(shape, cache_dtype)
    ops.reshape_and_cache_torch(key, value, expected_k, expected_v, slots)
    actual_k, actual_v = poisoned(shape, cache_dtype), poisoned(shape, cache_dtype)
    torch.ops.vllm_whisper.reshape_and_cache(key, value, actual_k, actual_v, slots)
    assert bits_equal(actual_k, expected_k) and bits_equal(actual_v, expected_v)


@needs_c
@pytest.mark.parametrize("dtype", DTYPES)
def test_reshape_and_cache_strided_inputs(dtype):
    """The decoder's (batch, heads, tokens, head_dim) K/V through the wrapper, and a K slice of a fused qkv."""
    gen = torch.Generator().manual_seed(3)
    batch, heads, new, head_dim, num_blocks = 5, 6, 3, 64, 6
    k = torch.randn(batch, new, heads, head_dim, generator=gen).to(dtype).transpose(1, 2)  # like split_heads
    v = torch.randn(batch, new, heads, head_dim, generator=gen).to(dtype).transpose(1, 2)
    slot_mapping = random_slots(gen, batch * new, num_blocks * 16, pad_every=4).view(batch, new)
    shape = (num_blocks, 16, heads, head_dim)
    expected_k, expected_v = poisoned(shape, dtype), poisoned(shape, dtype)
    ops.reshape_and_cache_torch(k.transpose(1, 2).reshape(-1, heads, head_dim),
                                v.transpose(1, 2).reshape(-1, heads, head_dim), expected_k, expected_v,
                                slot_mapping.reshape(-1))
    actual_k, actual_v = poisoned(shape, dtype), poisoned(shape, dtype)
    ops.reshape_and_cache(k.transpose(1, 2), v.transpose(1, 2), actual_k, actual_v, slot_mapping)
    assert bits_equal(actual_k, expected_k) and bits_equal(actual_v, expected_v)

    qkv = torch.randn(20, 3 * heads, head_dim, generator=gen).to(dtype)
    key, value = qkv[:, heads:2 * heads], qkv[:, 2 * heads:]  # stride(0) = 3 * heads * head_dim
    slots = random_slots(gen, 20, num_blocks * 16, pad_every=0)
    expected_k, expected_v = poisoned(shape, dtype), poisoned(shape, dtype)
    ops.reshape_and_cache_torch(key, value, expected_k, expected_v, slots)
    actual_k, actual_v = poisoned(shape, dtype), poisoned(shape, dtype)
    torch.ops.vllm_whisper.reshape_and_cache(key, value, actual_k, actual_v, slots)
    assert bits_equal(actual_k, expected_k) and bits_equal(actual_v, expected_v)
    # A non-unit stride in head_dim is made contiguous first.
    wide = torch.randn(20, heads, 2 * head_dim, generator=gen).to(dtype)
    expected_k, expected_v = poisoned(shape, dtype), poisoned(shape, dtype)
    ops.reshape_and_cache_torch(wide[..., ::2], wide[..., 1::2], expected_k, expected_v, slots)
    actual_k, actual_v = poisoned(shape, dtype), poisoned(shape, dtype)
    torch.ops.vllm_whisper.reshape_and_cache(wide[..., ::2], wide[..., 1::2], actual_k, actual_v, slots)
    assert bits_equal(actual_k, expected_k) and bits_equal(actual_v, expected_v)


@needs_c
def test_reshape_and_cache_rejects_bad_arguments():
    key = torch.randn(4, 2, 8)
    cache = torch.zeros(2, 16, 2, 8)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.vllm_whisper.reshape_and_cache(key, key, cache, cache.clone(), torch.tensor([0, 1, 2, 32]))
    with pytest.raises(RuntimeError, match="int64"):
        torch.ops.vllm_whisper.reshape_and_cache(key, key, cache, cache.clone(), torch.tensor([0, 1, 2, 3]).int())
    with pytest.raises(RuntimeError, match="heads and head_dim"):
        torch.ops.vllm_whisper.reshape_and_cache(torch.randn(4, 2, 4), torch.randn(4, 2, 4), cache, cache.clone(),
                                                 torch.arange(4))
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.vllm_whisper.reshape_and_cache(key, key, cache.transpose(0, 1), cache.transpose(0, 1),
                                                 torch.arange(4))
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.vllm_whisper.reshape_and_cache(key.double(), key.double(), cache, cache.clone(), torch.arange(4))


# --- reshape_and_cache_cross (one slot of 1500 frames per window) -----------------------------------------------

@needs_c
@pytest.mark.parametrize("src_dtype", DTYPES)
@pytest.mark.parametrize("cache_dtype", DTYPES)
@pytest.mark.parametrize("num_slots,batch,heads,frames,head_dim", [(4, 3, 6, 1500, 64), (7, 7, 2, 37, 16)])
def test_reshape_and_cache_cross_matches_reference(src_dtype, cache_dtype, num_slots, batch, heads, frames,
                                                   head_dim):
    gen = torch.Generator().manual_seed(batch * 100 + frames)
    # The layout compute_cross_kv returns: (batch, frames, heads, head_dim) transposed to (batch, heads, ...).
    key = torch.randn(batch, frames, heads, head_dim, generator=gen).to(src_dtype).transpose(1, 2)
    value = torch.randn(batch, frames, heads, head_dim, generator=gen).to(src_dtype).transpose(1, 2)
    slots = torch.randperm(num_slots, generator=gen)[:batch]
    slots[1] = -1
    shape = (num_slots, heads, frames, head_dim)
    expected_k, expected_v = poisoned(shape, cache_dtype), poisoned(shape, cache_dtype)
    ops.reshape_and_cache_cross_torch(key, value, expected_k, expected_v, slots)
    actual_k, actual_v = poisoned(shape, cache_dtype), poisoned(shape, cache_dtype)
    torch.ops.vllm_whisper.reshape_and_cache_cross(key, value, actual_k, actual_v, slots)
    assert bits_equal(actual_k, expected_k) and bits_equal(actual_v, expected_v)
    # Contiguous input and a plain list of slots through the wrapper.
    actual_k, actual_v = poisoned(shape, cache_dtype), poisoned(shape, cache_dtype)
    ops.reshape_and_cache_cross(key.contiguous(), value.contiguous(), actual_k, actual_v, slots.tolist())
    assert bits_equal(actual_k, expected_k) and bits_equal(actual_v, expected_v)


@needs_c
def test_reshape_and_cache_cross_rejects_bad_arguments():
    key = torch.randn(2, 2, 10, 8)
    cache = torch.zeros(3, 2, 10, 8)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.vllm_whisper.reshape_and_cache_cross(key, key, cache, cache.clone(), torch.tensor([0, 3]))
    with pytest.raises(RuntimeError, match="frames"):
        torch.ops.vllm_whisper.reshape_and_cache_cross(torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8), cache,
                                                       cache.clone(), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="slots must be"):
        torch.ops.vllm_whisper.reshape_and_cache_cross(key, key, cache, cache.clone(), torch.tensor([0]))


# --- Whisper logits rules ------------------------------------------------------------------------------------------

EOT, NO_TS, TS, VOCAB = 50256, 50362, 50363, 51864  # tiny.en


def random_history(rng: random.Random, ts_begin: int, eot: int, ending: str) -> list[int]:
    """Random text with monotonic timestamps, then an ending that selects a timestamp rule."""
    if ending == "empty":
        return []
    history: list[int] = []
    stamp = rng.randrange(0, 40)
    for _ in range(rng.randrange(0, 14)):
        if rng.random() < 0.35:
            stamp += rng.randrange(0, 30)
            history.append(ts_begin + min(stamp, 1500))
        else:
            history.append(rng.randrange(0, eot))
    stamp = min(stamp + rng.randrange(0, 20), 1400)
    if ending == "pair":  # ..., <|t1|>, <|t2|>: a closed pair
        history += [ts_begin + stamp, ts_begin + stamp + rng.randrange(0, 5)]
    elif ending == "open":  # ..., text, <|t|>: an opening timestamp
        history += [rng.randrange(0, eot), ts_begin + stamp]
    elif ending == "single":  # just one timestamp (penultimate counts as a timestamp)
        history = [ts_begin + stamp]
    elif ending == "text":
        history.append(rng.randrange(0, eot))
    return history


def random_rules(rng: random.Random, eot: int, no_ts: int, ts_begin: int, vocab: int) -> LogitsRules:
    return LogitsRules(
        eot, no_ts, ts_begin, suppress_tokens=tuple(rng.sample(range(eot), min(eot, rng.choice([0, 5, 20, 90])))),
        begin_suppress_tokens=(220, eot), timestamps=rng.random() < 0.75, suppress_blank=rng.random() < 0.8,
        max_initial_timestamp_index=rng.choice([None, 0, 50, vocab]),
    )


def random_batch(seed: int, batch: int, vocab: int = VOCAB, eot: int = EOT, no_ts: int = NO_TS, ts_begin: int = TS,
                 dtype: torch.dtype = torch.float32, shared_rules: bool = False):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    endings = ["empty", "pair", "open", "single", "text", "random"]
    rules = [random_rules(rng, eot, no_ts, ts_begin, vocab) for _ in range(batch)]
    if shared_rules:
        rules = [rules[0]] * batch
    histories = [random_history(rng, ts_begin, eot, endings[i % len(endings)]) for i in range(batch)]
    logits = torch.randn(batch, vocab, generator=gen) * 3
    for row in range(batch):  # timestamps competitive in some rows, hopeless or dominant in others
        logits[row, ts_begin:] += rng.choice([0.0, rng.uniform(-3, 5), -50.0, 30.0])
    return logits.to(dtype), rules, histories


def assert_same_rules(actual: torch.Tensor, expected: torch.Tensor, original: torch.Tensor,
                      rules: list[LogitsRules], histories: list[list[int]]) -> None:
    """Same -inf positions as the reference and every other value untouched; a row may differ only where the
    logsumexp rule's two sides are within float rounding of each other (a tie the two computations may break
    differently)."""
    finite_a, finite_e = torch.isfinite(actual), torch.isfinite(expected)
    for row in torch.nonzero((finite_a != finite_e).any(dim=1)).flatten().tolist():
        ts = rules[row].timestamp_begin
        assert torch.equal(finite_a[row, ts:], finite_e[row, ts:]), f"row {row}: timestamp -inf positions differ"
        unforced = actual[row] if finite_a[row, :ts].any() else expected[row]  # the row before the logsumexp rule
        margin = abs(float(torch.logsumexp(unforced[ts:].double(), 0) - unforced[:ts].double().max()))
        assert margin < 1e-4, f"row {row}: the logsumexp rule differs with a margin of {margin}"
    same = finite_a & finite_e
    assert torch.equal(actual[same], original[same])


def rule_coverage(expected: torch.Tensor, rules: list[LogitsRules], histories: list[list[int]]) -> dict[str, int]:
    """How often each timestamp rule decided something in this batch (so the random batches exercise them all)."""
    seen = dict.fromkeys(["pair", "open", "floor", "initial", "max_initial", "lse_forced", "lse_not_forced"], 0)
    for row, (r, h) in enumerate(zip(rules, histories)):
        if not r.timestamps:
            continue
        ts = r.timestamp_begin
        last = bool(h) and h[-1] >= ts
        penult = len(h) < 2 or h[-2] >= ts
        seen["pair"] += last and penult
        seen["open"] += last and not penult
        seen["floor"] += any(t >= ts for t in h) and not (last and penult)
        seen["initial"] += not h
        seen["max_initial"] += not h and r.max_initial_timestamp_index is not None
        if h and not (last and not penult) and torch.isfinite(expected[row, ts:]).any():
            forced = not torch.isfinite(expected[row, :ts]).any()
            seen["lse_forced" if forced else "lse_not_forced"] += 1
    return seen


@needs_c
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed,batch", [(0, 1), (1, 7), (2, 48), (3, 33)])
def test_logits_rules_match_apply_rules(dtype, seed, batch):
    logits, rules, histories = random_batch(seed, batch, dtype=dtype)
    expected = apply_rules(logits, rules, histories)
    actual = ops.apply_whisper_logits_rules(logits, rules, histories)
    assert actual.dtype == dtype and actual.data_ptr() != logits.data_ptr()
    assert_same_rules(actual, expected, logits, rules, histories)
    if batch >= 33:
        coverage = rule_coverage(expected, rules, histories)
        assert all(count > 0 for count in coverage.values()), coverage


@needs_c
@pytest.mark.parametrize("seed", range(4))
def test_logits_rules_match_per_row_reference(seed):
    """Against sampling/reference.py directly, with one rules object for the whole batch (stride-0 lists)."""
    logits, rules, histories = random_batch(100 + seed, 24, vocab=51865, eot=50257, no_ts=50363, ts_begin=50364,
                                            shared_rules=seed % 2 == 0)
    expected = torch.stack([apply_rules_row(r, logits[i], h) for i, (r, h) in enumerate(zip(rules, histories))])
    batch = ops.pack_logits_rules(rules, histories)
    if seed % 2 == 0:
        assert batch.suppress_tokens.stride(0) == 0
    actual = logits.clone()
    torch.ops.vllm_whisper.apply_whisper_logits_rules(actual, *batch.as_args())
    assert_same_rules(actual, expected, logits, rules, histories)


@needs_c
def test_logits_rules_small_vocab_edges():
    """A small vocabulary: timestamps at the very end, max_initial beyond it, suppress ids out of range, a
    padded logits buffer whose extra columns must stay untouched, and rows with everything forbidden."""
    vocab, eot, no_ts, ts = 100, 50, 59, 60
    rng = random.Random(7)
    rules = [LogitsRules(eot, no_ts, ts, suppress_tokens=(3, 99, 150, -1)[: rng.randrange(5)],
                         begin_suppress_tokens=(eot, 0), timestamps=True, suppress_blank=True,
                         max_initial_timestamp_index=rng.choice([None, 0, 3, 500])) for _ in range(30)]
    histories = [random_history(rng, ts, eot, ["empty", "pair", "open", "text", "random"][i % 5])
                 for i in range(30)]
    histories = [[min(t, vocab - 1) for t in h] for h in histories]
    histories[3] = [ts + 39, ts + 39]  # last timestamp closed a pair at the end: no timestamp left
    buffer = torch.full((30, vocab + 3), float("nan"))
    logits = buffer[:, :vocab]
    logits.copy_(torch.randn(30, vocab, generator=torch.Generator().manual_seed(7)) * 2)
    logits[5:10] = float("-inf")
    original = logits.clone()
    in_range = [dataclasses.replace(r, suppress_tokens=tuple(t for t in r.suppress_tokens if 0 <= t < vocab))
                for r in rules]  # the op ignores ids outside the vocabulary; the reference cannot take them
    expected = apply_rules(original, in_range, histories)
    batch = ops.pack_logits_rules(rules, histories)
    torch.ops.vllm_whisper.apply_whisper_logits_rules(logits, *batch.as_args())
    assert torch.isnan(buffer[:, vocab:]).all()
    assert_same_rules(logits, expected, original, rules, histories)


@needs_c
def test_logits_rules_rejects_bad_arguments():
    logits = torch.randn(2, 100)
    batch = ops.pack_logits_rules([LogitsRules(50, 59, 60, (), (), True)] * 2, [[1], [2, 3]])
    args = batch.as_args()
    with pytest.raises(RuntimeError, match="output_lens"):
        torch.ops.vllm_whisper.apply_whisper_logits_rules(logits, args[0], torch.tensor([1, 5]), *args[2:])
    with pytest.raises(RuntimeError, match="row_config"):
        torch.ops.vllm_whisper.apply_whisper_logits_rules(logits, args[0], args[1], args[2][:, :5], *args[3:])
    with pytest.raises(RuntimeError, match="int64"):
        torch.ops.vllm_whisper.apply_whisper_logits_rules(logits, args[0].int(), *args[1:])
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        torch.ops.vllm_whisper.apply_whisper_logits_rules(logits.double(), *args)


@pytest.mark.parametrize("seed", range(3))
def test_torch_fallback_matches_per_row_reference(seed):
    """The packed-tensor torch path (used without the extension, or for CUDA tensors without CUDA kernels)."""
    logits, rules, histories = random_batch(200 + seed, 40)
    expected = torch.stack([apply_rules_row(r, logits[i], h) for i, (r, h) in enumerate(zip(rules, histories))])
    actual = apply_rules_packed_(logits.clone(), ops.pack_logits_rules(rules, histories))
    assert_same_rules(actual, expected, logits, rules, histories)
    assert all(count > 0 for count in rule_coverage(expected, rules, histories).values())


def test_fallback_without_extension():
    """With the extension disabled every wrapper still works, on the torch references."""
    code = """
import torch
from vllm_whisper import _custom_ops as ops
from vllm_whisper.sampling.batched import apply_rules
from vllm_whisper.sampling.rules import LogitsRules
assert not ops.HAS_C_EXTENSION and "torch fallback" in ops.backend(), ops.backend()
cache = torch.zeros(2, 16, 2, 4); cache_v = torch.zeros_like(cache)
key = torch.randn(3, 2, 4)
ops.reshape_and_cache(key, key, cache, cache_v, torch.tensor([0, -1, 20]))
assert torch.equal(cache.view(-1, 2, 4)[20], key[2]) and torch.equal(cache.view(-1, 2, 4)[0], key[0])
cross = torch.zeros(3, 2, 10, 4)
window = torch.randn(1, 2, 10, 4)
ops.reshape_and_cache_cross(window, window, cross, cross.clone(), [2])
assert torch.equal(cross[2], window[0])
rules = [LogitsRules(50, 59, 60, (3,), (50,), True)] * 2
logits = torch.randn(2, 100)
histories = [[], [61, 7]]
assert torch.equal(ops.apply_whisper_logits_rules(logits, rules, histories), apply_rules(logits, rules, histories))
print("ok")
"""
    env = dict(os.environ, VLLM_WHISPER_DISABLE_C_EXTENSION="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


# --- int8 quantize / rescale (--quantization int8) -----------------------------------------------------------

@needs_c
@pytest.mark.parametrize("rows,cols", [(1, 384), (7, 1001), (1500, 384), (3, 1536)])
def test_quantize_rows_int8_matches_torch_bit_for_bit(rows, cols):
    gen = torch.Generator().manual_seed(rows + cols)
    x = torch.randn(rows, cols, generator=gen) * 4
    x[0, :5] = torch.tensor([0.0, 0.5, 1.5, -2.5, 127.0])  # exact halves after scaling: round half to even
    x[-1] = 0.0  # an all-zero row: the smallest scale, all zeros
    values, scales = ops.quantize_rows_int8(x)
    want_values, want_scales = ops.quantize_rows_int8_torch(x)
    assert values.dtype == torch.int8 and scales.shape == (rows, 1)
    assert torch.equal(values, want_values) and torch.equal(scales, want_scales)
    assert int(values.abs().amax(dim=1).min()) in (0, 127) and int(values.abs().max()) <= 127
    strided = torch.randn(cols, rows, generator=gen).t()  # non-contiguous input
    got, want = ops.quantize_rows_int8(strided), ops.quantize_rows_int8_torch(strided)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@needs_c
@pytest.mark.parametrize("rows,cols", [(1, 51864), (64, 5000), (1500, 1536), (2, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_dequantize_int8_rows_matches_torch_bit_for_bit(rows, cols, with_bias):
    gen = torch.Generator().manual_seed(rows * cols)
    acc = torch.randint(-2**22, 2**22, (rows, cols), dtype=torch.int32, generator=gen)
    row_scales, col_scales = torch.rand(rows, 1, generator=gen), torch.rand(cols, generator=gen)
    bias = torch.randn(cols, generator=gen) if with_bias else None
    got = ops.dequantize_int8_rows(acc, row_scales, col_scales, bias)
    assert torch.equal(got, ops.dequantize_int8_rows_torch(acc, row_scales, col_scales, bias))


@needs_c
def test_int8_ops_reject_wrong_inputs():
    with pytest.raises(ValueError, match="2-D float32"):
        ops.quantize_rows_int8(torch.randn(2, 3, 4))
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.vllm_whisper.quantize_rows_int8(torch.randn(2, 3).half())
    acc = torch.zeros(2, 3, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="one float32 per column"):
        torch.ops.vllm_whisper.dequantize_int8_rows(acc, torch.ones(2, 1), torch.ones(4), None)
    with pytest.raises(RuntimeError, match="one float32 per row"):
        torch.ops.vllm_whisper.dequantize_int8_rows(acc, torch.ones(3, 1), torch.ones(3), None)


# --- cross attention (CPU) ---------------------------------------------------------------------------------------

@needs_c
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 5])
def test_cross_attention_matches_reference(cache_dtype, tokens):
    """Rows over shuffled slots of different lengths, decode (1 token) and prompt (5): the kernel equals the
    float32 reference over the same cache values; frames past a row's length hold NaN, so reading one would show."""
    from vllm_whisper.kernels.cross_attention import cross_attention_reference

    gen = torch.Generator().manual_seed(1)
    slots_n, heads, frames, dim = 5, 3, 70, 64
    cross_k = torch.randn(slots_n, heads, frames, dim, generator=gen).to(cache_dtype)
    cross_v = torch.randn(slots_n, heads, frames, dim, generator=gen).to(cache_dtype)
    slots, lens = [4, 0, 2, 1], [70, 9, 33, 1]
    for slot, n in zip(slots, lens):
        cross_k[slot, :, n:] = cross_v[slot, :, n:] = float("nan")
    q = torch.randn(4, heads, tokens, dim, generator=gen)
    out = ops.cross_attention(q, cross_k, cross_v, slots, lens)
    assert out.dtype == torch.float32 and out.shape == q.shape
    for b, (slot, n) in enumerate(zip(slots, lens)):
        want = cross_attention_reference(q[b:b + 1], cross_k[:, :, :n].float(), cross_v[:, :, :n].float(),
                                         torch.tensor([slot]))
        torch.testing.assert_close(out[b:b + 1], want, rtol=1e-5, atol=1e-5)
    fallback = ops.cross_attention_torch(q, cross_k, cross_v, slots, lens, dim ** -0.5)
    torch.testing.assert_close(out, fallback, rtol=1e-5, atol=1e-5)


@needs_c
def test_cross_attention_rejects_bad_arguments():
    q = torch.zeros(2, 3, 1, 8)
    cache = torch.zeros(4, 3, 10, 8)
    op = torch.ops.vllm_whisper.cross_attention
    slots, lens = torch.tensor([0, 1]), torch.tensor([10, 10])
    with pytest.raises(RuntimeError, match="slot 4 of row 1 is out of range"):
        op(q, cache, cache, torch.tensor([0, 4]), lens, 1.0)
    with pytest.raises(RuntimeError, match="reads 0 frames"):
        op(q, cache, cache, slots, torch.tensor([10, 0]), 1.0)
    with pytest.raises(RuntimeError, match="float32 or both bfloat16"):
        op(q, cache.half(), cache.half(), slots, lens, 1.0)
    with pytest.raises(RuntimeError, match="do not fit queries"):
        op(torch.zeros(2, 2, 1, 8), cache, cache, slots, lens, 1.0)
    with pytest.raises(RuntimeError, match="q must be float32"):
        op(q.bfloat16(), cache, cache, slots, lens, 1.0)


# --- fake implementations (torch.compile) --------------------------------------------------------------------------

@needs_c
def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    key, value = torch.randn(5, 2, 8, generator=gen), torch.randn(5, 2, 8, generator=gen)
    cache, cache_v = torch.zeros(2, 16, 2, 8), torch.zeros(2, 16, 2, 8)
    torch.library.opcheck(torch.ops.vllm_whisper.reshape_and_cache.default,
                          (key, value, cache, cache_v, torch.tensor([0, 3, -1, 17, 31])))
    window = torch.randn(2, 2, 30, 8, generator=gen)
    torch.library.opcheck(torch.ops.vllm_whisper.reshape_and_cache_cross.default,
                          (window, window.clone(), torch.zeros(3, 2, 30, 8), torch.zeros(3, 2, 30, 8),
                           torch.tensor([2, 0])))
    logits, rules, histories = random_batch(5, 6, vocab=100, eot=50, no_ts=59, ts_begin=60)
    torch.library.opcheck(torch.ops.vllm_whisper.apply_whisper_logits_rules.default,
                          (logits, *ops.pack_logits_rules(rules, histories).as_args()))
    torch.library.opcheck(torch.ops.vllm_whisper.quantize_rows_int8.default, (torch.randn(4, 24, generator=gen),))
    acc = torch.randint(-1000, 1000, (4, 6), dtype=torch.int32, generator=gen)
    for bias in (None, torch.randn(6, generator=gen)):
        torch.library.opcheck(torch.ops.vllm_whisper.dequantize_int8_rows.default,
                              (acc, torch.rand(4, 1, generator=gen), torch.rand(6, generator=gen), bias))
    cross = torch.randn(3, 2, 30, 8, generator=gen).bfloat16()
    torch.library.opcheck(torch.ops.vllm_whisper.cross_attention.default,
                          (torch.randn(2, 2, 1, 8, generator=gen), cross, cross.clone(), torch.tensor([2, 0]),
                           torch.tensor([30, 7]), 0.35))


@needs_c
def test_ops_under_torch_compile():
    """fullgraph torch.compile (aot_eager) through the fake implementations and the mutation annotations."""
    logits, rules, histories = random_batch(9, 4, vocab=100, eot=50, no_ts=59, ts_begin=60)
    batch = ops.pack_logits_rules(rules, histories)

    def step(logits, key, cache, cache_v, slots):
        logits = logits * 1.0
        torch.ops.vllm_whisper.apply_whisper_logits_rules(logits, *batch.as_args())
        torch.ops.vllm_whisper.reshape_and_cache(key, key, cache, cache_v, slots)
        return logits

    key = torch.randn(3, 2, 8)
    slots = torch.tensor([1, -1, 30])
    caches = [torch.zeros(2, 16, 2, 8) for _ in range(4)]
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    out = compiled(logits, key, caches[0], caches[1], slots)
    expected = step(logits, key, caches[2], caches[3], slots)
    assert torch.equal(out, expected) and torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])
    meta = torch.empty(4, 100, device="meta")
    torch.ops.vllm_whisper.apply_whisper_logits_rules(meta, *(t.to("meta") for t in batch.as_args()))


# --- CUDA kernels (run where a GPU and a CUDA build of the extension are present) -----------------------------

needs_cuda_kernels = pytest.mark.skipif(
    not ops.HAS_CUDA_KERNELS, reason="vllm_whisper._C has no CUDA kernels (built without a visible GPU; "
    "rebuild with VLLM_WHISPER_TARGET_DEVICE=cuda bash scripts/build_ext.sh --force)")


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("src_dtype,cache_dtype", [(torch.float16, torch.float16), (torch.float32, torch.bfloat16),
                                                   (torch.bfloat16, torch.float32)])
def test_cuda_cache_writes_match_reference(src_dtype, cache_dtype):
    gen = torch.Generator().manual_seed(11)
    key = torch.randn(4, 1500, 6, 64, generator=gen).to(src_dtype).transpose(1, 2)
    slots = torch.tensor([3, -1, 0, 5])
    shape = (6, 6, 1500, 64)
    expected = poisoned(shape, cache_dtype), poisoned(shape, cache_dtype)
    ops.reshape_and_cache_cross_torch(key, key * 2, *expected, slots)
    actual = poisoned(shape, cache_dtype).cuda(), poisoned(shape, cache_dtype).cuda()
    ops.reshape_and_cache_cross(key.cuda(), (key * 2).cuda(), *actual, slots.cuda())
    assert all(bits_equal(a.cpu(), e) for a, e in zip(actual, expected))

    tokens = torch.randn(40, 3, 6, 64, generator=gen).to(src_dtype)  # (tokens, q|k|v, heads, head_dim)
    k, v = tokens[:, 1], tokens[:, 2]
    slot_mapping = random_slots(gen, 40, 8 * 16, pad_every=3)
    shape = (8, 16, 6, 64)
    expected = poisoned(shape, cache_dtype), poisoned(shape, cache_dtype)
    ops.reshape_and_cache_torch(k, v, *expected, slot_mapping)
    actual = poisoned(shape, cache_dtype).cuda(), poisoned(shape, cache_dtype).cuda()
    ops.reshape_and_cache(k.cuda(), v.cuda(), *actual, slot_mapping.cuda())
    assert all(bits_equal(a.cpu(), e) for a, e in zip(actual, expected))


@pytest.mark.gpu
@needs_cuda_kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed,batch", [(0, 1), (2, 48), (3, 200)])
def test_cuda_logits_rules_match_apply_rules(dtype, seed, batch):
    logits, rules, histories = random_batch(seed, batch, dtype=dtype, shared_rules=seed == 3)
    expected = apply_rules(logits, rules, histories)
    actual = ops.apply_whisper_logits_rules(logits.cuda(), rules, histories)
    assert actual.is_cuda
    assert_same_rules(actual.cpu(), expected, logits, rules, histories)


# --- CUDA sources: nvcc compile-only ------------------------------------------------------------------------------

@pytest.mark.tooling
def test_cuda_sources_compile_with_nvcc():
    """csrc/cuda/*.cu compile with nvcc for sm_75 and sm_90 (-c, torch's headers), and the CUDA bindings match
    them, so CUDA build breaks show on machines without a GPU (about 40 s on 2 cores)."""
    sys.path.insert(0, str(ROOT / "csrc"))
    try:
        from setup_ext import find_cuda_home
    finally:
        sys.path.pop(0)
    if find_cuda_home() is None:
        if REQUIRE:
            pytest.fail("VLLM_WHISPER_REQUIRE_EXT is set but no CUDA toolkit (nvcc) was found")
        pytest.skip("no CUDA toolkit (nvcc) found")
    proc = subprocess.run([sys.executable, str(ROOT / "csrc" / "setup_ext.py"), "check-cuda", "--arch", "75",
                           "--arch", "90"], capture_output=True, text=True, cwd=ROOT)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-6000:]
