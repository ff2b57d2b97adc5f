"""The `vllm-whisper` command: `vllm-whisper transcribe FILE [FILE ...] --model tiny.en --output-format jsonl`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vllm_whisper.audio.decode import AudioDecodeError
from vllm_whisper.model_executor.errors import ModelLoadError

OUTPUT_FORMATS = ("jsonl", "json", "text", "srt", "vtt", "verbose_json", "tsv")
EXTENSIONS = {"jsonl": "json", "text": "txt", "verbose_json": "json"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-whisper", description="Whisper speech-to-text on vllm-whisper.")
    commands = parser.add_subparsers(dest="command", required=True)
    tr = commands.add_parser("transcribe", help="transcribe or translate audio files")
    tr.add_argument("files", nargs="+", help="audio files (wav, flac, mp3, ogg, m4a, webm, mpeg, ...)")
    tr.add_argument("--model", default="tiny.en", help="alias (tiny.en, base), model directory or hub id")
    tr.add_argument("--language", default=None, help="spoken language (ISO code or name); default: detect")
    tr.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    tr.add_argument("--output-format", choices=OUTPUT_FORMATS, default="jsonl")
    tr.add_argument("--output-dir", type=Path, default=None, help="write FILE.<format> here instead of stdout")
    tr.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    tr.add_argument("--quantization", choices=("int8",), default=None,
                    help="int8: int8 weights for the linear layers (CPU, float32 activations; much faster)")
    tr.add_argument("--device", default="cpu", help="cpu or cuda")
    tr.add_argument("--no-timestamps", action="store_true", help="decode without timestamp tokens")
    tr.add_argument("--beam-size", type=int, default=1, help="beams for beam search (1: greedy)")
    tr.add_argument("--word-timestamps", action="store_true",
                    help="time every word (verbose_json lists them; subtitles snap to words)")
    tr.add_argument("--chunking-strategy", choices=("sequential", "parallel"), default="sequential",
                    help="sequential seek with the reference semantics, or 30 s pieces cut at pauses decoded at once")
    tr.add_argument("--vad-filter", action="store_true", help="drop non-speech with silero-vad before decoding")
    tr.add_argument("--initial-prompt", default=None, help="text that conditions the first window")
    tr.add_argument("--temperature", type=float, default=0.0,
                    help="first decoding temperature; failed windows retry hotter in steps of 0.2 up to 1.0")
    tr.add_argument("--no-condition-on-previous-text", action="store_true",
                    help="do not prompt each window with the previous text")
    tr.add_argument("--max-num-seqs", type=int, default=64, help="most windows decoding at once")
    tr.add_argument("--kv-cache-space", type=float, default=4.0,
                    help="GiB of CPU memory for the KV cache (self-attention blocks + cross-attention slots)")
    tr.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                    help="fraction of GPU memory to use in total (CUDA only)")
    tr.add_argument("--attention-backend", choices=("auto", "torch", "triton"), default="auto",
                    help="attention kernels: auto (Triton on CUDA, torch on CPU), torch, triton")
    tr.add_argument("--enforce-eager", action="store_true",
                    help="never capture CUDA graphs for decode steps (they are captured on CUDA with Triton)")
    serve = commands.add_parser("serve", help="run the OpenAI-compatible server (same flags as "
                                "python -m vllm_whisper.entrypoints.api_server)")
    from vllm_whisper.entrypoints.api_server import add_server_arguments

    add_server_arguments(serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from vllm_whisper.entrypoints.api_server import run_server

        run_server(args)
        return 0
    return _transcribe(args)


def _transcribe(args: argparse.Namespace) -> int:
    from vllm_whisper.config import EngineConfig
    from vllm_whisper.entrypoints.llm import LLM
    from vllm_whisper.outputs.formats import render_text
    from vllm_whisper.params import TranscriptionParams, fallback_temperatures

    fmt = args.output_format
    if fmt not in ("jsonl", "text") and len(args.files) > 1 and args.output_dir is None:
        print(f"error: {fmt} output of several files needs --output-dir", file=sys.stderr)
        return 2
    try:
        params = TranscriptionParams(
            task=args.task, language=args.language, timestamps=not args.no_timestamps, beam_size=args.beam_size,
            word_timestamps=args.word_timestamps, chunking_strategy=args.chunking_strategy,
            vad_filter=args.vad_filter, initial_prompt=args.initial_prompt,
            temperature=fallback_temperatures(args.temperature),
            condition_on_previous_text=not args.no_condition_on_previous_text)
        engine_config = EngineConfig(max_num_seqs=args.max_num_seqs, kv_cache_space_gib=args.kv_cache_space,
                                     gpu_memory_utilization=args.gpu_memory_utilization,
                                     attention_backend=args.attention_backend,
                                     enforce_eager=args.enforce_eager)
        llm = LLM(model=args.model, dtype=args.dtype, device=args.device, engine_config=engine_config,
                  quantization=args.quantization)
        if params.task == "translate" and not llm.tokenizer.is_multilingual:
            raise ValueError(f"The English-only model {args.model!r} cannot translate; use a multilingual model.")
    except (ValueError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from vllm_whisper.audio.decode import load_audio

    failures = 0
    decoded: dict[int, object] = {}
    errors: dict[int, str] = {}
    for index, file in enumerate(args.files):
        try:
            decoded[index] = load_audio(file)
        except AudioDecodeError as exc:
            errors[index] = str(exc)
    # All decodable files go to the engine together so their windows share batches.
    order = sorted(decoded)
    results = dict(zip(order, llm.transcribe([decoded[i] for i in order], params))) if order else {}
    for index, file in enumerate(args.files):
        if index in errors:
            failures += 1
            print(f"error: {errors[index]}", file=sys.stderr)
            if fmt == "jsonl" and args.output_dir is None:
                print(json.dumps({"file": file, "error": errors[index]}), flush=True)
            continue
        result = results[index]
        if fmt == "jsonl":
            body = json.dumps({
                "file": file, "text": result.text, "language": result.language, "duration": result.duration,
            }, ensure_ascii=False) + "\n"
        else:
            granularities = ("segment", "word") if args.word_timestamps else ("segment",)
            body = render_text(result, fmt, task=args.task, timestamp_granularities=granularities)
        if args.output_dir is not None:
            args.output_dir.mkdir(parents=True, exist_ok=True)
            extension = EXTENSIONS.get(fmt, fmt)
            (args.output_dir / f"{Path(file).stem}.{extension}").write_text(body, encoding="utf-8")
        else:
            sys.stdout.write(body)
            sys.stdout.flush()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
