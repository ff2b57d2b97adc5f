"""Offline throughput: all clips submitted to the engine at once, next to our own one-at-a-time run and to
faster-whisper's sequential transcription (int8 and float32) on the same CTranslate2 weights and clips.

Real-time factor (RTFx) = seconds of audio / wall seconds, file decoding included. All systems decode greedily
with timestamps, English, no VAD, no conditioning on previous text, so they do the same work.

    python benchmarks/benchmark_throughput.py --clips 30 --json throughput.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import progress, report

from vllm_whisper.engine_args import EngineArgs


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    EngineArgs.add_cli_args(parser)  # our engine's flags; no flags measures what a user gets by default
    parser.add_argument("--clips", type=int, default=30)
    parser.add_argument("--sentences-per-clip", type=int, default=1,
                        help="1: one short sentence per clip; 8: ~25 s paragraphs that fill a window like real speech")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--skip-faster-whisper", action="store_true")
    args = parser.parse_args()

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
        if not args.skip_faster_whisper:
            for compute_type in ("int8", "float32"):
                row = run_faster_whisper(args.model, compute_type, paths, audio_seconds)
                if row is None:
                    print("faster-whisper is not installed: pip install faster-whisper")
                    break
                rows.append(row)
        references = [c.text for c in clips]
    report(f"Throughput, {args.model}, {len(paths)} clips of {args.sentences_per_clip} sentence(s), "
           f"{audio_seconds:.1f} s of audio", rows, references, args.json, benchmark="throughput", model=args.model,
           dtype=args.dtype, quantization=args.quantization, precision=rows[0]["precision"], clips=len(paths), sentences_per_clip=args.sentences_per_clip,
           audio_seconds=audio_seconds)
    together, alone = rows[0], rows[1]
    print(f"all at once vs one at a time: {together['rtfx'] / alone['rtfx']:.2f}x")


if __name__ == "__main__":
    main()
