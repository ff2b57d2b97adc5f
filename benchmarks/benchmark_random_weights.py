"""Offline throughput on random-weight models of the real Whisper shapes: vllm-whisper's engine next to Hugging Face
transformers (batched generate, SDPA) on the same weights and the same random input features.

Every system decodes exactly --tokens tokens per 30 s window (end-of-text is suppressed), greedy, no timestamps,
with the same prompt (<|startoftranscript|> [<|en|> <|transcribe|>] <|notimestamps|>) and the same suppress lists,
so the work is fixed and the figures compare engines, not transcripts.
Real-time factor (RTFx) = windows x 30 s / wall seconds; tokens/s counts the decoded tokens.

The sweep: for each batch size B the engine gets all windows at once with EngineConfig(max_num_seqs=B), and
transformers runs generate() on B windows at a time. faster-whisper is not in this workload: it cannot load
random weights without a CTranslate2 conversion (benchmark_throughput.py compares it on real speech).

    python benchmarks/benchmark_random_weights.py --shape small,large-v3 --json random.json      # CUDA, fp16
    python benchmarks/benchmark_random_weights.py --shape tiny --windows 16 --tokens 32 --batch-sizes 1,16 --device cpu
    python benchmarks/benchmark_random_weights.py --quick --json quick.json                     # smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from common import machine_description, progress

from vllm_whisper.config import EngineConfig
from vllm_whisper.sampling.rules import LogitsRules
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.engine.sampler import SamplingParams
from vllm_whisper.engine_args import EngineArgs
from vllm_whisper.model_executor.loader import LoadedModel, resolve_dtype
from vllm_whisper.model_executor.whisper_config import WHISPER_SHAPES, WhisperConfig
from vllm_whisper.testing.random_model import random_model
from vllm_whisper.tokenizer import WhisperTokenizer

WINDOW_SECONDS = 30.0
OURS = "vllm-whisper"
TRANSFORMERS = "transformers (sdpa)"
DEFAULT_SHAPES = ("small", "medium", "large-v3", "large-v3-turbo")
FASTER_WHISPER_NOTE = ("faster-whisper: skipped in this workload (random weights would need a CTranslate2 "
                       "conversion); benchmark_throughput.py compares it on real speech")


@dataclass(frozen=True)
class Options:
    """What to run, parsed from the command line."""

    shapes: tuple[str, ...]
    windows: int
    tokens: int
    batch_sizes: tuple[int, ...]
    transformers_batch_sizes: tuple[int, ...]
    batch1_windows: int | None
    dtype: str
    device: str
    json_path: Path | None
    skip_transformers: bool
    seed: int = 0
    enforce_eager: bool = False  # our engine without CUDA graphs (to measure what they give)


@dataclass
class Row:
    """One timed run: one system on one shape at one batch size (or concurrency)."""

    shape: str
    system: str
    batch_size: int
    windows: int
    tokens_requested: int
    tokens_decoded: int = 0
    tokens_per_window: float = 0.0  # mean over windows; must equal tokens_requested
    wall_s: float = 0.0
    windows_per_s: float = 0.0
    rtfx: float = 0.0
    tokens_per_s: float = 0.0
    ratio_vs_transformers: float | None = None  # ours only: our RTFx / transformers' RTFx at this batch size
    warning: str | None = None
    error: str | None = None


@dataclass
class Summary:
    """Per shape: each system's best batch size, the ratio of the bests, and ours at batch 1."""

    shape: str
    ours_best_rtfx: float | None
    ours_best_batch: int | None
    transformers_best_rtfx: float | None
    transformers_best_batch: int | None
    ratio_best: float | None
    ours_batch1_rtfx: float | None


@dataclass
class Timed:
    """What one system's timed pass returns: per-window token lists and the wall time."""

    tokens: list[list[int]]
    wall_s: float


@dataclass(frozen=True)
class Pass:
    """One timed pass of one system: its batch size, how many windows it times and how many warm it up."""

    batch_size: int
    windows: int
    warmup: int
    device: str


@dataclass
class Agreement:
    """How often ours and transformers chose the same tokens (greedy on identical weights and inputs)."""

    shape: str
    windows_identical: float
    tokens_identical: float


@dataclass
class Workload:
    """A random-weight model and the fixed inputs both systems decode."""

    shape: str
    loaded: LoadedModel
    features: torch.Tensor  # (windows, n_mels, 3000) on the device, model dtype
    prompt: list[int]
    rules: LogitsRules
    tokens: int


# --- tokenizers and models ------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def tokenizer_for(vocab_size: int) -> WhisperTokenizer:
    """tiny.en's tokenizer for 51864 logits, base's for 51865, base's text tokens with large-v3's specials for 51866."""
    from vllm_whisper.model_executor.aliases import tokenizer_dir
    from vllm_whisper.tokenizer import load_tokenizer

    if vocab_size == 51864:
        return load_tokenizer(tokenizer_dir("tiny.en"), vocab_size)
    if vocab_size == 51865:
        return load_tokenizer(tokenizer_dir("base"), vocab_size)
    if vocab_size == 51866:
        return _large_v3_tokenizer(tokenizer_dir("base") / "tokenizer.json")
    raise ValueError(f"no tokenizer for a vocabulary of {vocab_size} (Whisper has 51864, 51865 or 51866)")


def _large_v3_tokenizer(base_tokenizer_json: Path) -> WhisperTokenizer:
    """base's BPE with the special tokens renumbered for 51866 logits (<|yue|> after <|su|> shifts the rest by one)."""
    from tokenizers import Tokenizer

    from vllm_whisper.tokenizer import standard_special_tokens

    raw = json.loads(base_tokenizer_json.read_text())
    template = raw["added_tokens"][0]
    first = template["id"]  # <|endoftext|>, 50257 in every multilingual vocabulary
    raw["added_tokens"] = [{**template, "id": first + i, "content": text}
                           for i, text in enumerate(standard_special_tokens(51866))]
    tokenizer = WhisperTokenizer(Tokenizer.from_str(json.dumps(raw)), 51866)
    if tokenizer.timestamp_begin + 1501 != 51866:
        raise ValueError(f"large-v3 tokenizer layout is off: timestamps start at {tokenizer.timestamp_begin}")
    return tokenizer


def fixed_length_rules(tokenizer: WhisperTokenizer) -> LogitsRules:
    """Greedy, no timestamps, the default suppress lists plus end-of-text, so every window decodes to the limit."""
    suppress = set(tokenizer.default_suppress_tokens()) | {tokenizer.eot}
    return LogitsRules(eot=tokenizer.eot, no_timestamps=tokenizer.no_timestamps,
                       timestamp_begin=tokenizer.timestamp_begin, suppress_tokens=tuple(sorted(suppress)),
                       begin_suppress_tokens=tuple(tokenizer.suppress_at_begin()), timestamps=False)


def build_workload(shape: str, options: Options) -> Workload:
    """Random weights of `shape` on the device, random log-mel windows and the shared prompt and rules."""
    config = WHISPER_SHAPES[shape]
    tokenizer = tokenizer_for(config.vocab_size)
    prompt = tokenizer.sot_sequence("en" if tokenizer.is_multilingual else None, "transcribe", False)
    if len(prompt) + options.tokens > config.max_target_positions:
        raise ValueError(f"--tokens {options.tokens} plus a {len(prompt)}-token prompt exceeds the decoder's "
                         f"{config.max_target_positions} positions")
    dtype = resolve_dtype(options.dtype, options.device)
    loaded = random_model(config, tokenizer, dtype=dtype, device=options.device, seed=options.seed, name=shape)
    generator = torch.Generator().manual_seed(options.seed + 1)
    features = torch.randn(options.windows, config.num_mel_bins, 3000, generator=generator)
    return Workload(shape, loaded, features.to(options.device, dtype), prompt, fixed_length_rules(tokenizer),
                    options.tokens)


# --- timing ---------------------------------------------------------------------------------------------
def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(device: str, work: Callable[[], list[list[int]]]) -> Timed:
    """Wall time of `work`, with the device synchronized before both clock readings."""
    synchronize(device)
    start = time.perf_counter()
    tokens = work()
    synchronize(device)
    return Timed(tokens, time.perf_counter() - start)


def plan_pass(options: Options, batch_size: int, first: bool) -> Pass:
    """Windows to time (--batch1-windows at batch 1) and to warm up with: a full batch on CUDA (Triton / cuBLAS pick
    and compile kernels per shape, never inside the timed pass); one window on the CPU before a system's first pass."""
    windows = options.batch1_windows if batch_size == 1 and options.batch1_windows else options.windows
    windows = min(windows, options.windows)
    if torch.device(options.device).type == "cuda":
        warmup = min(batch_size, windows)
    else:
        warmup = 1 if first else 0
    return Pass(batch_size, windows, warmup, options.device)


def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- vllm-whisper ---------------------------------------------------------------------------------------
def engine_decode(engine: LLMEngine, workload: Workload, count: int, tag: str) -> list[list[int]]:
    """Submit the first `count` windows at once, step until all finish, return their tokens in window order."""
    params = SamplingParams(workload.rules, max_new_tokens=workload.tokens)
    for i in range(count):
        engine.add_request(f"{tag}{i}", workload.features[i], workload.prompt, params)
    finished: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finished[out.request_id] = out.tokens
    return [finished[f"{tag}{i}"] for i in range(count)]


def run_ours(workload: Workload, p: Pass, enforce_eager: bool = False) -> Timed:
    """The engine with at most `batch_size` sequences at once and every window submitted, warmed up first (on CUDA
    it captures decode graphs for buckets up to batch_size unless enforce_eager)."""
    engine = LLMEngine(workload.loaded, EngineConfig(max_num_seqs=p.batch_size,
                                                           enforce_eager=enforce_eager))
    try:
        engine_decode(engine, workload, p.warmup, "warmup")
        return timed(p.device, lambda: engine_decode(engine, workload, p.windows, "w"))
    finally:
        del engine
        free_device_memory()


# --- transformers ---------------------------------------------------------------------------------------
def build_transformers(workload: Workload):
    """WhisperForConditionalGeneration (SDPA) sharing our weights, with our prompt layout and suppress lists."""
    import transformers
    from transformers import GenerationConfig, WhisperConfig as HFWhisperConfig, WhisperForConditionalGeneration

    transformers.logging.set_verbosity_error()
    loaded, tok = workload.loaded, workload.loaded.tokenizer
    dims = {f.name: getattr(loaded.config, f.name) for f in fields(WhisperConfig) if f.name != "alignment_heads"}
    s = tok.special
    hf_config = HFWhisperConfig(**dims, activation_function="gelu", scale_embedding=False, pad_token_id=s.eot,
                                bos_token_id=s.eot, eos_token_id=s.eot, decoder_start_token_id=s.sot)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration._from_config(hf_config, attn_implementation="sdpa")
    state = {f"model.{k}": v for k, v in loaded.model.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if set(missing) != {"proj_out.weight"} or unexpected:
        raise RuntimeError(f"our weights do not map onto transformers' Whisper: missing {missing}, "
                           f"unexpected {unexpected}")
    model.proj_out.weight = model.model.decoder.embed_tokens.weight  # tied, as in the released checkpoints
    model.generation_config = hf_generation_config(workload, GenerationConfig)
    return model.eval()


def hf_generation_config(workload: Workload, generation_config_class: type):
    """The generation settings write_hf_dir would ship, with our fixed-length suppress lists."""
    tok, s = workload.loaded.tokenizer, workload.loaded.tokenizer.special
    settings = dict(
        decoder_start_token_id=s.sot, bos_token_id=s.eot, eos_token_id=s.eot, pad_token_id=s.eot,
        no_timestamps_token_id=s.no_timestamps, prev_sot_token_id=s.sot_prev,
        suppress_tokens=list(workload.rules.suppress_tokens),
        begin_suppress_tokens=list(workload.rules.begin_suppress_tokens),
        is_multilingual=tok.is_multilingual, max_initial_timestamp_index=50,
        max_length=workload.loaded.config.max_target_positions,
    )
    if tok.is_multilingual:
        settings["lang_to_id"] = {f"<|{code}|>": i for code, i in tok.language_to_id.items()}
        settings["task_to_id"] = {"transcribe": s.transcribe, "translate": s.translate}
    return generation_config_class(**settings)


def hf_decode(model, workload: Workload, start: int, stop: int) -> list[list[int]]:
    """generate() on windows [start, stop) with min = max new tokens; returns the tokens after the prompt."""
    multilingual = workload.loaded.tokenizer.is_multilingual
    with torch.inference_mode():
        out = model.generate(workload.features[start:stop], language="en" if multilingual else None,
                             task="transcribe" if multilingual else None, return_timestamps=False,
                             min_new_tokens=workload.tokens, max_new_tokens=workload.tokens, do_sample=False)
    sequences = out.sequences if hasattr(out, "sequences") else out
    return [strip_prompt(row, workload.prompt, workload.loaded.tokenizer.eot) for row in sequences.tolist()]


def strip_prompt(row: list[int], prompt: list[int], pad: int) -> list[int]:
    """The generated tokens of one output row: without the prompt (when echoed) and the end-of-text padding."""
    if row[:len(prompt)] == prompt:
        row = row[len(prompt):]
    while row and row[-1] == pad:
        row = row[:-1]
    return row


def run_transformers(model, workload: Workload, p: Pass) -> Timed:
    """generate() on `batch_size` windows at a time, warmed up first."""
    if p.warmup:
        hf_decode(model, workload, 0, p.warmup)

    def all_batches() -> list[list[int]]:
        tokens: list[list[int]] = []
        for start in range(0, p.windows, p.batch_size):
            tokens += hf_decode(model, workload, start, min(start + p.batch_size, p.windows))
        return tokens

    return timed(p.device, all_batches)


# --- rows -----------------------------------------------------------------------------------------------
def make_row(workload: Workload, system: str, batch_size: int, result: Timed) -> Row:
    """Throughput figures for one timed pass, with a warning when any window decoded other than --tokens tokens."""
    windows = len(result.tokens)
    decoded = sum(len(t) for t in result.tokens)
    row = Row(workload.shape, system, batch_size, windows, workload.tokens, decoded, decoded / windows,
              result.wall_s, windows / result.wall_s, windows * WINDOW_SECONDS / result.wall_s,
              decoded / result.wall_s)
    wrong = [len(t) for t in result.tokens if len(t) != workload.tokens]
    if wrong:
        row.warning = (f"{len(wrong)} of {windows} windows decoded {min(wrong)}..{max(wrong)} tokens, "
                       f"not {workload.tokens}")
    return row


def failed_row(workload: Workload, system: str, p: Pass, exc: Exception) -> Row:
    return Row(workload.shape, system, p.batch_size, p.windows, workload.tokens,
               error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


def attempt(workload: Workload, system: str, p: Pass, run: Callable[[Pass], Timed]) -> tuple[Row, Timed | None]:
    """Run one timed pass; out-of-memory becomes an error row instead of ending the sweep."""
    try:
        result = run(p)
    except torch.OutOfMemoryError as exc:
        row = failed_row(workload, system, p, exc)
    else:
        return make_row(workload, system, p.batch_size, result), result
    free_device_memory()  # after the except block, once the traceback no longer holds the failed run's tensors
    return row, None


def agreement(shape: str, ours: list[list[int]], theirs: list[list[int]]) -> Agreement:
    """Share of windows (and of token positions) where both systems chose the same tokens, over common windows."""
    same_windows = sum(a == b for a, b in zip(ours, theirs)) / min(len(ours), len(theirs))
    pairs = [(x, y) for a, b in zip(ours, theirs) for x, y in zip(a, b)]
    same_tokens = sum(x == y for x, y in pairs) / max(len(pairs), 1)
    return Agreement(shape, same_windows, same_tokens)


def sweep(workload: Workload, options: Options, system: str, batch_sizes: tuple[int, ...],
          run: Callable[[Pass], Timed]) -> tuple[list[Row], list[list[int]] | None]:
    """One system over its batch sizes; also returns the tokens of its first successful pass."""
    rows: list[Row] = []
    first_tokens = None
    for i, batch_size in enumerate(progress(batch_sizes, desc=f"{system}, {workload.shape}")):
        row, result = attempt(workload, system, plan_pass(options, batch_size, first=i == 0), run)
        rows.append(row)
        if first_tokens is None and result is not None:
            first_tokens = result.tokens
    return rows, first_tokens


def benchmark_shape(shape: str, options: Options) -> tuple[list[Row], Agreement | None]:
    """All batch sizes for one shape: ours first, then transformers on the same weights and inputs."""
    workload = build_workload(shape, options)
    rows, ours_tokens = sweep(workload, options, OURS, options.batch_sizes,
                              lambda p: run_ours(workload, p, options.enforce_eager))
    hf_tokens = None
    if not options.skip_transformers:
        model = build_transformers(workload)
        hf_rows, hf_tokens = sweep(workload, options, TRANSFORMERS, options.transformers_batch_sizes,
                                   lambda p: run_transformers(model, workload, p))
        rows += hf_rows
        del model
    del workload
    free_device_memory()
    set_ratios(rows)
    match = agreement(shape, ours_tokens, hf_tokens) if ours_tokens and hf_tokens else None
    return rows, match


def set_ratios(rows: list[Row]) -> None:
    """ratio_vs_transformers on each of our rows that has a transformers row at the same shape and batch size."""
    theirs = {(r.shape, r.batch_size): r.rtfx for r in rows if r.system == TRANSFORMERS and not r.error}
    for row in rows:
        peer = theirs.get((row.shape, row.batch_size))
        if row.system == OURS and not row.error and peer:
            row.ratio_vs_transformers = row.rtfx / peer


def best(rows: list[Row], shape: str, system: str) -> Row | None:
    done = [r for r in rows if r.shape == shape and r.system == system and not r.error and not r.warning]
    return max(done, key=lambda r: r.rtfx, default=None)


def summarize(rows: list[Row], shapes: tuple[str, ...]) -> list[Summary]:
    """Best RTFx per system and shape over the sweep (rows with a token-count warning do not count)."""
    out = []
    for shape in shapes:
        ours, theirs = best(rows, shape, OURS), best(rows, shape, TRANSFORMERS)
        batch1 = [r.rtfx for r in rows if r.shape == shape and r.system == OURS and r.batch_size == 1
                  and not r.error and not r.warning]
        out.append(Summary(shape, ours and ours.rtfx, ours and ours.batch_size, theirs and theirs.rtfx,
                           theirs and theirs.batch_size, ours.rtfx / theirs.rtfx if ours and theirs else None,
                           batch1[0] if batch1 else None))
    return out


# --- output ---------------------------------------------------------------------------------------------
def markdown_table(rows: list[Row]) -> str:
    lines = ["| shape | batch | system | wall s | windows/s | RTFx | tokens/s | tokens/window | vs transformers |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    shape_order = {shape: i for i, shape in enumerate(dict.fromkeys(r.shape for r in rows))}
    for r in sorted(rows, key=lambda r: (shape_order[r.shape], r.batch_size, r.system != OURS)):
        if r.error:
            lines.append(f"| {r.shape} | {r.batch_size} | {r.system} | failed: {r.error} | | | | | |")
            continue
        ratio = f"{r.ratio_vs_transformers:.2f}x" if r.ratio_vs_transformers is not None else "–"
        lines.append(f"| {r.shape} | {r.batch_size} | {r.system} | {r.wall_s:.2f} | {r.windows_per_s:.2f} | "
                     f"{r.rtfx:.1f} | {r.tokens_per_s:.1f} | {r.tokens_per_window:g} | {ratio} |")
        if r.warning:
            lines.append(f"| {r.shape} | {r.batch_size} | WARNING {r.system} | {r.warning} | | | | | |")
    return "\n".join(lines)


def summary_table(summaries: list[Summary]) -> str:
    def fmt(value: float | None, batch: int | None = None) -> str:
        if value is None:
            return "–"
        return f"{value:.1f} (batch {batch})" if batch is not None else f"{value:.1f}"

    lines = ["| shape | ours best RTFx | transformers best RTFx | ours / transformers | ours RTFx at batch 1 |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for s in summaries:
        ratio = f"{s.ratio_best:.2f}x" if s.ratio_best is not None else "–"
        lines.append(f"| {s.shape} | {fmt(s.ours_best_rtfx, s.ours_best_batch)} | "
                     f"{fmt(s.transformers_best_rtfx, s.transformers_best_batch)} | {ratio} | "
                     f"{fmt(s.ours_batch1_rtfx)} |")
    return "\n".join(lines)


def report(options: Options, rows: list[Row], matches: list[Agreement]) -> None:
    """Print the table (with the machine and the options) and write the JSON when asked."""
    machine = machine_description()
    dtype = resolve_dtype(options.dtype, options.device)
    print(f"\nRandom-weight Whisper, {options.windows} windows x {options.tokens} decoded tokens each, "
          f"{str(dtype).removeprefix('torch.')} on {options.device}")
    print(f"Machine: {machine}")
    print(markdown_table(rows))
    summaries = summarize(rows, options.shapes)
    print()
    print(summary_table(summaries))
    for m in matches:
        print(f"token agreement ours vs transformers ({m.shape}, first batch size): {m.windows_identical:.0%} of "
              f"windows identical, {m.tokens_identical:.0%} of tokens (random weights: near-ties flip in low "
              f"precision)")
    print(FASTER_WHISPER_NOTE)
    if options.json_path:
        payload = {"benchmark": "random_weights", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine,
                   "options": {**asdict(options), "json_path": str(options.json_path),
                               "dtype": str(dtype).removeprefix("torch.")},
                   "notes": [FASTER_WHISPER_NOTE], "agreement": [asdict(m) for m in matches],
                   "summary": [asdict(x) for x in summaries],
                   "results": [asdict(r) for r in rows]}
        options.json_path.write_text(json.dumps(payload, indent=2))


# --- command line ---------------------------------------------------------------------------------------
def comma_list(values: list[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", default=None,
                        help=f"model shape, repeatable or comma list ({', '.join(WHISPER_SHAPES)}); "
                             f"default {','.join(DEFAULT_SHAPES)}")
    parser.add_argument("--windows", type=int, default=256, help="30 s windows of random features (default 256)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens decoded per window (default 128)")
    parser.add_argument("--batch-sizes", default="1,8,64,256",
                        help="sweep: engine max_num_seqs and transformers' generate() batch (default 1,8,64,256)")
    # Our engine's flags that apply to random weights (max_num_seqs is swept by --batch-sizes).
    EngineArgs.add_cli_args(parser, only=("dtype", "device", "enforce_eager"))
    parser.add_argument("--json", type=Path, default=None, help="write every row, the options and the date here")
    parser.add_argument("--transformers-batch-sizes", default=None,
                        help="transformers' sweep when it should differ (e.g. 64,256: batch 1 of large-v3 takes "
                             "many minutes); default: --batch-sizes")
    parser.add_argument("--batch1-windows", type=int, default=None,
                        help="windows timed at batch size 1, where each runs alone so fewer give the same RTFx "
                             "sooner (default: --windows)")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tiny shape, 4 windows, 8 tokens, batch sizes 1,4, CPU, float32")
    args = parser.parse_args(argv)
    if args.quick:
        args.shape, args.windows, args.tokens, args.batch_sizes = ["tiny"], 4, 8, "1,4"
        args.device, args.dtype = "cpu", "float32"
        args.transformers_batch_sizes = args.batch1_windows = None
    try:
        args.device = EngineArgs.from_cli_args(args).resolved_device
    except ValueError as exc:
        parser.error(str(exc))
    return validated(args, parser)


def validated(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Options:
    shapes = tuple(comma_list(args.shape or list(DEFAULT_SHAPES)))
    unknown = [s for s in shapes if s not in WHISPER_SHAPES]
    if unknown:
        parser.error(f"unknown shape {unknown[0]!r}; choose from {', '.join(WHISPER_SHAPES)}")
    try:
        resolve_dtype(args.dtype, args.device)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        batch_sizes = tuple(int(b) for b in comma_list([args.batch_sizes]))
        hf_batch_sizes = tuple(int(b) for b in comma_list([args.transformers_batch_sizes or args.batch_sizes]))
    except ValueError as exc:
        parser.error(f"{exc} (batch sizes are comma lists of positive integers, e.g. 1,8,64,256)")
    if not batch_sizes or not hf_batch_sizes or min(batch_sizes + hf_batch_sizes) < 1:
        parser.error("--batch-sizes must be positive integers, e.g. 1,8,64,256")
    if args.windows < 1 or args.tokens < 1 or (args.batch1_windows is not None and args.batch1_windows < 1):
        parser.error("--windows, --tokens and --batch1-windows must be at least 1")
    for shape in shapes:
        config = WHISPER_SHAPES[shape]
        room = config.max_target_positions - (4 if config.is_multilingual else 2)  # minus the prompt
        if args.tokens > room:
            parser.error(f"--tokens {args.tokens}: {shape} has room for {room} tokens after its prompt")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA GPU; use --device cpu")
    return Options(shapes, args.windows, args.tokens, batch_sizes, hf_batch_sizes, args.batch1_windows, args.dtype,
                   args.device, args.json, args.skip_transformers, args.seed, args.enforce_eager)


def main(argv: list[str] | None = None) -> None:
    options = parse_options(argv)
    rows: list[Row] = []
    matches: list[Agreement] = []
    for shape in options.shapes:
        shape_rows, match = benchmark_shape(shape, options)
        rows += shape_rows
        matches += [match] if match else []
    report(options, rows, matches)


if __name__ == "__main__":
    main()
