"""The attention kernels against torch: each Triton kernel next to torch SDPA / the torch reference backend at Whisper
shapes, with achieved bandwidth and FLOP rate as fractions of this device's measured ceilings.

Ceilings are measured here, not quoted: device copy bandwidth from a large tensor copy (bytes read + written per
second) and matmul FLOP/s from a large square matmul in the benchmark dtype. Each case reports, for both systems:
median time, GB/s of the bytes it must move (the cross-attention decode read is the engine's bandwidth floor: every
decoded token streams its window's whole cross K/V) and TFLOP/s of the attention math.

Cases (heads from --model, head dim 64, 1500 encoder frames):
  encoder        non-causal attention over the 1500 frames, --encoder-batch windows   vs F.scaled_dot_product_attention
  cross decode   one query per sequence over its window's cross K/V, batch 1 / 8 / 64  vs SDPA on the slot views
  self decode    store + paged self-attention, one token, context --context          vs the torch reference backend
  self prefill   store + paged self-attention over a --prompt-token prompt            vs the torch reference backend
  kv store       the fused K/V store alone                                           vs indexed assignment
  cross splits   (--sweep-splits) the cross decode kernel at every split count, to tune PROGRAMS_PER_SM

    python benchmarks/benchmark_kernels.py                         # CUDA: everything, large-v3 heads, fp16
    python benchmarks/benchmark_kernels.py --model small --dtype bfloat16 --sweep-splits --json kernels.json
    python benchmarks/benchmark_kernels.py                         # CPU: says Triton needs CUDA, times torch only
    python benchmarks/benchmark_kernels.py --interpret             # CPU: also runs the kernels in Triton's
                                                                   # interpreter at tiny shapes (checks only)
GPU timings use triton.testing.do_bench (median, L2 flushed before every run, so small batches are not served
from L2); CPU timings are medians of wall-clock loops.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_description  # noqa: E402

HEADS = {"tiny": 6, "base": 8, "small": 12, "medium": 16, "large-v3": 20, "large-v3-turbo": 20}
FRAMES, HEAD_DIM, BLOCK_SIZE = 1500, 64, 16
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# --- timing and ceilings ----------------------------------------------------------------------------------------
def bench(fn, device: torch.device, repeats: int) -> float:
    """Median seconds per call."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=max(50, repeats * 5), return_mode="median") / 1e3
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_ceilings(device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    """Copy bandwidth (read + write bytes / s) of a large tensor copy and FLOP/s of a large square matmul."""
    n_bytes = 2 * 2**30 if device.type == "cuda" else 256 * 2**20
    src = torch.empty(n_bytes // 2, dtype=torch.float16, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    copy_s = bench(lambda: dst.copy_(src), device, repeats)
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    matmul_s = bench(lambda: a @ b, device, repeats)
    return {"copy_GBps": 2 * n_bytes / copy_s / 1e9, "matmul_TFLOPs": 2 * n**3 / matmul_s / 1e12,
            "matmul_n": n, "copy_bytes": n_bytes}


# --- cases ------------------------------------------------------------------------------------------------------
class Case:
    def __init__(self, name: str, bytes_moved: float, flops: float, torch_fn, triton_fn=None, check=None):
        self.name, self.bytes, self.flops = name, bytes_moved, flops
        self.torch_fn, self.triton_fn, self.check = torch_fn, triton_fn, check


def heads_view(batch, tokens, heads, dtype, device, count=3):
    packed = torch.randn(batch, tokens, count, heads, HEAD_DIM, device=device, dtype=dtype)
    return [packed[:, :, i].transpose(1, 2) for i in range(count)]


def paged_setup(batch, heads, past, new, dtype, device):
    """One layer's cache, scattered block tables, metadata for `new` tokens after `past` cached ones."""
    from vllm_whisper.attention.metadata import PagedAttentionMetadata
    from vllm_whisper.attention.kv_cache_layout import KVCacheTensors

    per_seq = -(-(past + new) // BLOCK_SIZE)
    num_blocks = batch * per_seq + 8
    order = torch.randperm(num_blocks)[: batch * per_seq].view(batch, per_seq).tolist()
    meta = PagedAttentionMetadata.build(order, [past] * batch, [new] * batch, list(range(batch)), BLOCK_SIZE, device)
    shape = (num_blocks, BLOCK_SIZE, heads, HEAD_DIM)
    cross = (batch, heads, FRAMES, HEAD_DIM)
    cache = KVCacheTensors([torch.randn(shape, device=device, dtype=dtype)],
                           [torch.randn(shape, device=device, dtype=dtype)],
                           [torch.randn(cross, device=device, dtype=dtype)],
                           [torch.randn(cross, device=device, dtype=dtype)], BLOCK_SIZE)
    return cache, meta


def build_cases(args, heads: int, dtype: torch.dtype, device: torch.device, with_triton: bool) -> list[Case]:
    from vllm_whisper.attention.torch_paged import TorchPagedAttention

    size = torch.empty((), dtype=dtype).element_size()
    cases = []
    if with_triton:
        from vllm_whisper.attention.triton_backend import TritonPagedAttention
        from vllm_whisper.kernels.cross_attention import cross_attention
        from vllm_whisper.kernels.encoder_attention import encoder_attention
        from vllm_whisper.kernels.kv_store import store_kv

    def close(want, got):
        return float((want.float() - got.float()).abs().max())

    # encoder
    b = args.encoder_batch
    q, k, v = heads_view(b, FRAMES, heads, dtype, device)
    cases.append(Case(f"encoder  B={b} H={heads} N={FRAMES}", 4 * b * heads * FRAMES * HEAD_DIM * size,
                      4 * b * heads * FRAMES * FRAMES * HEAD_DIM,
                      lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v),
                      with_triton and (lambda q=q, k=k, v=v: encoder_attention(q, k, v)),
                      with_triton and (lambda q=q, k=k, v=v: close(F.scaled_dot_product_attention(q, k, v),
                                                                   encoder_attention(q, k, v)))))
    # cross-attention decode: the bandwidth floor
    for batch in args.batch:
        cache, meta = paged_setup(batch, heads, 0, 1, dtype, device)
        ref = TorchPagedAttention(cache, meta)
        (q,) = heads_view(batch, 1, heads, dtype, device, count=1)
        slots = meta.cross_slots.to(torch.int32)
        read = 2 * batch * heads * FRAMES * HEAD_DIM * size
        cases.append(Case(f"cross decode  B={batch} H={heads}", read, 4 * batch * heads * FRAMES * HEAD_DIM,
                          lambda ref=ref, q=q: ref.cross_attend(0, q),
                          with_triton and (lambda c=cache, q=q, s=slots: cross_attention(q, c.cross_k[0], c.cross_v[0],
                                                                                         s)),
                          with_triton and (lambda ref=ref, c=cache, q=q, s=slots: close(
                              ref.cross_attend(0, q), cross_attention(q, c.cross_k[0], c.cross_v[0], s)))))
    # decoder self-attention (store + attention), decode and prefill
    for batch in args.batch:
        for label, past, new in (("self decode", args.context - 1, 1), ("self prefill", 0, args.prompt_tokens)):
            cache, meta = paged_setup(batch, heads, past, new, dtype, device)
            q, k, v = heads_view(batch, new, heads, dtype, device)
            context = past + new
            moved = (2 * batch * heads * context * HEAD_DIM + 2 * batch * heads * new * HEAD_DIM) * size
            flops = 4 * batch * heads * new * context * HEAD_DIM
            ref = TorchPagedAttention(cache, meta)
            tri = TritonPagedAttention(cache, meta) if with_triton else None
            cases.append(Case(f"{label}  B={batch} H={heads} ctx={context}", moved, flops,
                              lambda ref=ref, q=q, k=k, v=v: ref.self_attend(0, q, k, v),
                              with_triton and (lambda tri=tri, q=q, k=k, v=v: tri.self_attend(0, q, k, v)),
                              with_triton and (lambda ref=ref, tri=tri, q=q, k=k, v=v: close(
                                  ref.self_attend(0, q, k, v)[:, :, :new], tri.self_attend(0, q, k, v)[:, :, :new]))))
    # fused store alone
    from vllm_whisper.kernels.kv_store import store_kv_reference

    batch = max(args.batch)
    cache, meta = paged_setup(batch, heads, args.context - 1, 1, dtype, device)
    k, v = heads_view(batch, 1, heads, dtype, device, count=2)
    kc, vc = cache.self_k[0], cache.self_v[0]
    cases.append(Case(f"kv store  B={batch} H={heads}", 4 * batch * heads * HEAD_DIM * size, 0,
                      lambda: store_kv_reference(k, v, kc, vc, meta.slot_mapping),
                      with_triton and (lambda: store_kv(k, v, kc, vc, meta.slot_mapping))))
    return cases


def run_cases(cases: list[Case], device: torch.device, ceilings: dict, repeats: int) -> list[dict]:
    rows = []
    print(f"\n{'case':<36} {'system':<7} {'time us':>10} {'GB/s':>9} {'% copy':>7} {'TFLOP/s':>8} {'% mm':>6} "
          f"{'vs torch':>8} {'max err':>9}")
    for case in cases:
        results = {"torch": bench(case.torch_fn, device, repeats)}
        if case.triton_fn:
            results["triton"] = bench(case.triton_fn, device, repeats)
        error = case.check() if case.check else None
        for system, seconds in results.items():
            gbps = case.bytes / seconds / 1e9
            tflops = case.flops / seconds / 1e12
            speedup = results["torch"] / seconds
            row = {"case": case.name, "system": system, "time_us": seconds * 1e6, "GBps": gbps,
                   "copy_fraction": gbps / ceilings["copy_GBps"], "TFLOPs": tflops,
                   "matmul_fraction": tflops / ceilings["matmul_TFLOPs"], "speedup_vs_torch": speedup}
            if system == "triton" and error is not None:
                row["max_abs_error"] = error
            rows.append(row)
            err = f"{error:9.2e}" if system == "triton" and error is not None else ""
            print(f"{case.name:<36} {system:<7} {seconds * 1e6:>10.1f} {gbps:>9.1f} "
                  f"{100 * row['copy_fraction']:>6.1f}% {tflops:>8.2f} {100 * row['matmul_fraction']:>5.1f}% "
                  f"{speedup:>7.2f}x {err}")
    return rows


def sweep_splits(heads: int, dtype: torch.dtype, device: torch.device, batches: list[int], ceilings: dict) -> list:
    """The cross decode kernel at every split count: where does bandwidth peak for each batch?"""
    from vllm_whisper.kernels.cross_attention import cross_attention, plan_splits

    size = torch.empty((), dtype=dtype).element_size()
    rows = []
    print(f"\ncross decode split sweep (H={heads}); planned = the split count plan_splits picks")
    for batch in batches:
        k = torch.randn(batch, heads, FRAMES, HEAD_DIM, device=device, dtype=dtype)
        v = torch.randn_like(k)
        (q,) = heads_view(batch, 1, heads, dtype, device, count=1)
        slots = torch.arange(batch, dtype=torch.int32, device=device)
        planned, _ = plan_splits(batch * heads, FRAMES, 64, device)
        for splits in sorted({1, 2, 3, 4, 6, 8, 12, 16, 24, planned}):
            seconds = bench(lambda s=splits: cross_attention(q, k, v, slots, num_splits=s), device, 20)
            gbps = 2 * batch * heads * FRAMES * HEAD_DIM * size / seconds / 1e9
            rows.append({"batch": batch, "splits": splits, "time_us": seconds * 1e6, "GBps": gbps})
            mark = "  <- planned" if splits == planned else ""
            print(f"  B={batch:<3} splits={splits:<3} {seconds * 1e6:>9.1f} us {gbps:>8.1f} GB/s "
                  f"({100 * gbps / ceilings['copy_GBps']:.0f}% of copy){mark}")
    return rows


def interpreter_smoke() -> None:
    """Run every kernel once in Triton's interpreter at tiny shapes and check it against its reference."""
    from vllm_whisper.kernels.cross_attention import cross_attention, cross_attention_reference
    from vllm_whisper.kernels.encoder_attention import encoder_attention, encoder_attention_reference
    from vllm_whisper.kernels.kv_store import store_kv, store_kv_reference
    from vllm_whisper.kernels.paged_attention import paged_attention, paged_attention_reference

    print("\nTriton interpreter at tiny shapes (2 heads, head dim 64, 48 frames). These timings are of a Python "
          "emulator and say NOTHING about GPU speed; this only shows the kernels run and agree with their references.")
    q, k, v = heads_view(2, 48, 2, torch.float32, torch.device("cpu"))
    checks = {}
    start = time.perf_counter()
    checks["encoder"] = (encoder_attention(q, k, v) - encoder_attention_reference(q, k, v)).abs().max()
    cross_k, cross_v = torch.randn(3, 2, 48, 64), torch.randn(3, 2, 48, 64)
    slots = torch.tensor([2, 0], dtype=torch.int32)
    q1 = torch.randn(2, 2, 1, 64)
    checks["cross decode"] = (cross_attention(q1, cross_k, cross_v, slots, num_splits=3, block_n=16)
                              - cross_attention_reference(q1, cross_k, cross_v, slots)).abs().max()
    cache_k, cache_v = torch.zeros(8, 4, 2, 64), torch.zeros(8, 4, 2, 64)
    k_new, v_new = torch.randn(2, 2, 5, 64), torch.randn(2, 2, 5, 64)
    tables = torch.tensor([[5, 1], [2, 7]], dtype=torch.int32)
    slot_mapping = torch.tensor([[20, 21, 22, 23, 4], [8, 9, 10, -1, -1]])
    want_k, want_v = cache_k.clone(), cache_v.clone()
    store_kv(k_new, v_new, cache_k, cache_v, slot_mapping)
    store_kv_reference(k_new, v_new, want_k, want_v, slot_mapping)
    checks["kv store"] = (cache_k - want_k).abs().max() + (cache_v - want_v).abs().max()
    past, context = torch.tensor([0, 0], dtype=torch.int32), torch.tensor([5, 3], dtype=torch.int32)
    qp = torch.randn(2, 2, 5, 64)
    got = paged_attention(qp, cache_k, cache_v, tables, past, context)
    want = paged_attention_reference(qp, cache_k, cache_v, tables, past, context)
    checks["paged prefill"] = max((got[0] - want[0]).abs().max(), (got[1, :, :3] - want[1, :, :3]).abs().max())
    for name, error in checks.items():
        print(f"  {name:<14} max abs error vs reference {float(error):.2e}")
    print(f"  (all four in {time.perf_counter() - start:.1f} s of interpreter time)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(HEADS), default="large-v3", help="sets the head count")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="default: float16 on CUDA, float32 on CPU")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="decode batch sizes (default 1 8 64)")
    parser.add_argument("--encoder-batch", type=int, default=None, help="windows per encoder call (default 8)")
    parser.add_argument("--context", type=int, default=224, help="self-attention context of the decode cases")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="prompt length of the prefill cases")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sweep-splits", action="store_true", help="CUDA: cross decode bandwidth per split count")
    parser.add_argument("--interpret", action="store_true",
                        help="CPU: also run the Triton kernels in the interpreter at tiny shapes (correctness only)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    if args.interpret and not cuda:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
    device = torch.device("cuda" if cuda else "cpu")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if cuda else torch.float32)
    if not cuda:
        args.batch = args.batch or [1, 8]
        args.encoder_batch = args.encoder_batch or 1
        args.repeats = min(args.repeats, 5)
    args.batch = args.batch or [1, 8, 64]
    args.encoder_batch = args.encoder_batch or 8
    heads = HEADS[args.model]

    print(f"Kernel benchmark: {args.model} shapes (H={heads}, head dim {HEAD_DIM}, {FRAMES} frames), {dtype}")
    print(f"Machine: {machine_description()}")
    if not cuda:
        print("Triton needs CUDA: no GPU here, so only the torch references are timed (CPU, for orientation).")
    ceilings = measure_ceilings(device, dtype, args.repeats)
    print(f"Measured ceilings: copy {ceilings['copy_GBps']:.1f} GB/s (read + write of a "
          f"{ceilings['copy_bytes'] / 2**30:.2f} GiB copy), matmul {ceilings['matmul_TFLOPs']:.2f} TFLOP/s "
          f"({ceilings['matmul_n']}^3, {dtype})")
    with torch.inference_mode():
        rows = run_cases(build_cases(args, heads, dtype, device, with_triton=cuda), device, ceilings, args.repeats)
        sweep = sweep_splits(heads, dtype, device, args.batch, ceilings) if cuda and args.sweep_splits else []
        if args.interpret and not cuda:
            interpreter_smoke()
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine_description(), "date": time.strftime("%Y-%m-%d"), "model": args.model, "heads": heads,
            "dtype": str(dtype), "ceilings": ceilings, "results": rows, "split_sweep": sweep,
            "triton": cuda}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
