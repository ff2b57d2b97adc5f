"""Offline real-time factor on this machine: vllm-whisper next to Hugging Face transformers, same clips, same weights.

Real-time factor (RTFx) = seconds of audio / seconds of wall time, file decoding included, higher is better.
Both systems decode with timestamps (the default transcription mode) and greedy search. transformers runs on the
tiny.en CTranslate2 weights written out as a Hugging Face directory, so the two use identical numbers.

    python benchmarks/benchmark_offline.py --clips 24            # full run
    python benchmarks/benchmark_offline.py --clips 4 --json out.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import report

from vllm_whisper.engine_args import EngineArgs


def run_ours(engine_args: EngineArgs, paths: list[Path], audio_seconds: float) -> dict:
    from vllm_whisper import LLM

    llm = LLM(engine_args=engine_args)
    llm.transcribe([paths[0]])  # warm-up
    start = time.perf_counter()
    results = llm.transcribe(paths)
    wall = time.perf_counter() - start
    tokens = sum(len(s.tokens) for r in results for s in r.segments)
    return {"system": "vllm-whisper (sequential)", "wall_s": wall, "rtfx": audio_seconds / wall,
            "tokens_per_s": tokens / wall, "texts": [r.text for r in results]}


def run_transformers(hf_dir: Path, paths: list[Path], audio_seconds: float, batch_size: int) -> dict:
    import transformers
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from vllm_whisper.audio import load_audio
    from vllm_whisper.tokenizer import load_tokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = WhisperForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    tokenizer = load_tokenizer(hf_dir, model.config.vocab_size)

    def transcribe(batch: list[Path]) -> list[list[int]]:
        audio = [load_audio(p) for p in batch]
        features = extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            out = model.generate(features, return_timestamps=True, max_new_tokens=224)
        return out.tolist()

    transcribe(paths[:1])  # warm-up
    start = time.perf_counter()
    outputs: list[list[int]] = []
    for i in range(0, len(paths), batch_size):
        outputs += transcribe(paths[i:i + batch_size])
    wall = time.perf_counter() - start
    tokens = sum(sum(1 for t in ids if t != tokenizer.eot) for ids in outputs)
    label = "transformers (sequential)" if batch_size == 1 else f"transformers (batch {batch_size})"
    return {"system": label, "wall_s": wall, "rtfx": audio_seconds / wall, "tokens_per_s": tokens / wall,
            "texts": [tokenizer.decode(ids).strip() for ids in outputs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    EngineArgs.add_cli_args(parser)  # our engine's flags; --model also names the weights transformers runs
    parser.set_defaults(dtype="float32")  # transformers runs in float32
    parser.add_argument("--clips", type=int, default=24, help="number of synthetic sentences")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()

    from vllm_whisper.audio import load_audio
    from vllm_whisper.model_executor.export import export_hf
    from vllm_whisper.model_executor.loader import load_model
    from vllm_whisper.testing.speech import english_corpus

    with tempfile.TemporaryDirectory() as tmp:
        clips = english_corpus(Path(tmp) / "clips", args.clips)
        paths = [c.path for c in clips]
        audio_seconds = sum(len(load_audio(p)) / 16000 for p in paths)
        rows = [run_ours(EngineArgs.from_cli_args(args), paths, audio_seconds)]
        if not args.skip_transformers:
            hf_dir = export_hf(load_model(args.model, dtype="float32"), Path(tmp) / "hf")
            rows.append(run_transformers(hf_dir, paths, audio_seconds, batch_size=1))
            rows.append(run_transformers(hf_dir, paths, audio_seconds, batch_size=len(paths)))
        references = [c.text for c in clips]
    report(f"Offline transcription, {args.model}, {len(paths)} clips, {audio_seconds:.1f} s of audio", rows,
           references, args.json, benchmark="offline", model=args.model, clips=len(paths), audio_seconds=audio_seconds)


if __name__ == "__main__":
    main()
