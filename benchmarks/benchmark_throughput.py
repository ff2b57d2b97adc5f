"""Offline throughput: all clips submitted to the engine at once, next to our own one-at-a-time run, to
faster-whisper's sequential transcription (int8 and float32) on the same CTranslate2 weights and clips, and to
whisper.cpp's (q8_0 and f16) on the same weights converted to ggml (benchmarks/peers/convert_to_ggml.py, once,
cached in ~/.cache/vllm_whisper/ggml).

Real-time factor (RTFx) = seconds of audio / wall seconds, file decoding included. All systems decode greedily,
with timestamps, English, no VAD, no conditioning on previous text, so they do the same work.

    python benchmarks/benchmark_throughput.py --clips 30 --json throughput.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import progress, report

from vllm_whisper.engine_args import EngineArgs

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
WHISPER_CPP_TYPES = ("q8_0", "f16")


def run_engine(engine_args: EngineArgs, paths: list[Path], audio_seconds: float, together: bool) -> dict:
    from vllm_whisper import LLM

    llm = LLM(engine_args=engine_args)
    model = llm.engine.loaded.model  # what --dtype auto resolved to on this machine
    precision = model.quantization or str(model.dtype).removeprefix("torch.")
    llm.transcribe([paths[0]])  # warm-up
    start = time.perf_counter()
    if together:
        results = llm.transcribe(paths)
    else:
        results = [llm.transcribe([p])[0] for p in progress(paths, desc="vllm-whisper, one at a time")]
    wall = time.perf_counter() - start
    tokens = sum(len(s.tokens) for r in results for s in r.segments)
    label = "vllm-whisper, all at once" if together else "vllm-whisper, one at a time"
    if engine_args.audio_context != "full":
        label += f", audio-context {engine_args.audio_context}"
    return {"system": f"{label} ({precision})", "precision": precision, "wall_s": wall, "rtfx": audio_seconds / wall,
            "tokens_per_s": tokens / wall, "texts": [r.text for r in results],
            "encoder_runs": llm.engine.stats.encoder_runs}


def run_faster_whisper(model: str, compute_type: str, paths: list[Path], audio_seconds: float) -> dict | None:
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        return None
    from vllm_whisper.model_executor.aliases import OFFLINE_ALIASES, resolve_alias

    directory = str(resolve_alias(model) if model in OFFLINE_ALIASES else model)
    fw = WhisperModel(directory, device="cpu", compute_type=compute_type, cpu_threads=torch.get_num_threads())
    options = dict(beam_size=1, language="en", condition_on_previous_text=False, vad_filter=False,
                   temperature=0.0, without_timestamps=False)
    list(fw.transcribe(str(paths[0]), **options)[0])  # warm-up
    start = time.perf_counter()
    texts, tokens = [], 0
    for path in progress(paths, desc=f"faster-whisper ({compute_type})"):
        segments, _ = fw.transcribe(str(path), **options)
        segments = list(segments)
        texts.append("".join(s.text for s in segments).strip())
        tokens += sum(len(s.tokens) for s in segments)
    wall = time.perf_counter() - start
    return {"system": f"faster-whisper sequential ({compute_type})", "wall_s": wall,
            "rtfx": audio_seconds / wall, "tokens_per_s": tokens / wall, "texts": texts}


def run_whisper_cpp(model: str, ggml_type: str, paths: list[Path], audio_seconds: float,
                    cache_dir: Path | None) -> dict:
    """whisper.cpp (pywhispercpp) one file after another, as many threads as torch uses; WhisperCppUnavailable
    when pywhispercpp is missing."""
    from convert_to_ggml import cached_model
    from whisper_cpp import load_whisper_cpp, require_pywhispercpp, transcribe_files

    require_pywhispercpp()  # before converting anything
    wcpp = load_whisper_cpp(cached_model(model, ggml_type, cache_dir), torch.get_num_threads())
    transcribe_files(wcpp, paths[:1], timestamps=True)  # warm-up
    run = transcribe_files(wcpp, paths, True, lambda items: progress(items, desc=f"whisper.cpp ({ggml_type})"))
    return {"system": f"whisper.cpp sequential ({ggml_type})", "wall_s": run.wall_s, "rtfx": audio_seconds / run.wall_s,
            "tokens_per_s": run.tokens / run.wall_s, "texts": run.texts}


def whisper_cpp_rows(args: argparse.Namespace, paths: list[Path], audio_seconds: float) -> tuple[list[dict], list[str]]:
    """The whisper.cpp rows asked for, or why there are none (the reason is printed and kept in the JSON)."""
    from whisper_cpp import WhisperCppUnavailable

    rows = []
    for ggml_type in args.whisper_cpp_types.split(","):
        try:
            rows.append(run_whisper_cpp(args.model, ggml_type.strip(), paths, audio_seconds, args.ggml_cache))
        except WhisperCppUnavailable as exc:
            print(f"whisper.cpp: skipped ({exc})")
            return rows, [f"whisper.cpp: {exc}"]
    return rows, []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    EngineArgs.add_cli_args(parser)  # our engine's flags; no flags measures what a user gets by default
    parser.add_argument("--clips", type=int, default=30)
    parser.add_argument("--sentences-per-clip", type=int, default=1,
                        help="1: one short sentence per clip; 8: ~25 s paragraphs that fill a window like real speech")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--compare-audio-context", choices=("auto",), default=None,
                        help="also run the all-at-once row with this --audio-context, in the same invocation")
    parser.add_argument("--skip-faster-whisper", action="store_true")
    parser.add_argument("--skip-whisper-cpp", action="store_true")
    parser.add_argument("--whisper-cpp-types", default=",".join(WHISPER_CPP_TYPES),
                        help="comma-separated ggml types to convert to and run: q8_0, f16")
    parser.add_argument("--ggml-cache", type=Path, default=None,
                        help="where converted whisper.cpp models are kept (default ~/.cache/vllm_whisper/ggml)")
    args = parser.parse_args()
    unknown = set(t.strip() for t in args.whisper_cpp_types.split(",")) - set(WHISPER_CPP_TYPES)
    if unknown:
        parser.error(f"--whisper-cpp-types: unknown {', '.join(sorted(unknown))}; use {', '.join(WHISPER_CPP_TYPES)}")

    from vllm_whisper.audio import load_audio
    from vllm_whisper.testing.speech import english_corpus, paragraph_corpus

    with tempfile.TemporaryDirectory() as tmp:
        if args.sentences_per_clip > 1:
            clips = paragraph_corpus(Path(tmp) / "clips", args.clips, args.sentences_per_clip)
        else:
            clips = english_corpus(Path(tmp) / "clips", args.clips)
        paths = [c.path for c in clips]
        audio_seconds = sum(len(load_audio(p)) / 16000 for p in paths)
        rows = [
            run_engine(EngineArgs.from_cli_args(args), paths, audio_seconds, True),
            run_engine(EngineArgs.from_cli_args(args), paths, audio_seconds, False),
        ]
        if args.compare_audio_context:
            compared = dataclasses.replace(EngineArgs.from_cli_args(args), audio_context=args.compare_audio_context)
            rows.append(run_engine(compared, paths, audio_seconds, True))
        if not args.skip_faster_whisper:
            for compute_type in ("int8", "float32"):
                row = run_faster_whisper(args.model, compute_type, paths, audio_seconds)
                if row is None:
                    print("faster-whisper is not installed: pip install faster-whisper")
                    break
                rows.append(row)
        skipped = []
        if not args.skip_whisper_cpp:
            cpp_rows, skipped = whisper_cpp_rows(args, paths, audio_seconds)
            rows.extend(cpp_rows)
        references = [c.text for c in clips]
    report(f"Throughput, {args.model}, {len(paths)} clips of {args.sentences_per_clip} sentence(s), "
           f"{audio_seconds:.1f} s of audio", rows, references, args.json, benchmark="throughput", model=args.model,
           dtype=args.dtype, quantization=args.quantization, precision=rows[0]["precision"], clips=len(paths),
           sentences_per_clip=args.sentences_per_clip, audio_seconds=audio_seconds, skipped=skipped)
    together, alone = rows[0], rows[1]
    print(f"all at once vs one at a time: {together['rtfx'] / alone['rtfx']:.2f}x")


if __name__ == "__main__":
    main()
