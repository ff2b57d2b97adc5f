"""The `vllm-whisper` command: `vllm-whisper transcribe FILE ... [options]` and `vllm-whisper serve [MODEL]`.

`transcribe` streams: each input's result is printed (or written under --output-dir) the moment that input
finishes, while the others keep decoding together in the same engine batches; inputs are decoded lazily (at most
--max-files-in-flight at once), so any number of them runs in bounded memory. Errors the user can fix are one
line on stderr with exit status 2; Ctrl-C keeps every result already written and exits 130.

Only light modules are imported at the top, so --help, --version, option errors and a busy port answer at once,
and a missing package is reported in one line instead of a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from vllm_whisper import __version__
from vllm_whisper.engine_args import EngineArgs
from vllm_whisper.entrypoints.cli_errors import INTERRUPTED_EXIT, UsageError, fail, run_with_one_line_errors
from vllm_whisper.entrypoints.help_format import DefaultsHelpFormatter
from vllm_whisper.entrypoints.output_files import output_paths
from vllm_whisper.entrypoints.params_flags import add_params_arguments, params_from_cli_args
from vllm_whisper.entrypoints.progress import ProgressBar
from vllm_whisper.entrypoints.server_args import add_server_arguments, build_server_parser, resolve_model_argument

OUTPUT_FORMATS = ("jsonl", "json", "text", "srt", "vtt", "verbose_json", "tsv")
STDOUT_FORMATS_FOR_MANY = ("jsonl", "text")  # formats that can carry several inputs on stdout


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-whisper", description="Whisper speech-to-text on vllm-whisper.",
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{transcribe,serve}")
    tr = commands.add_parser(
        "transcribe", help="transcribe or translate audio files", formatter_class=DefaultsHelpFormatter,
        description="Transcribe audio files; each result is printed (or written) as soon as its file finishes. "
                    "jsonl lines come in completion order and name their file; text keeps input order.")
    tr.add_argument("files", nargs="+", help="audio files (wav, flac, mp3, ogg, m4a, webm, mpeg, ...)")
    tr.add_argument("--output-format", choices=OUTPUT_FORMATS, default="jsonl",
                    help="jsonl: one JSON line per input on stdout; the others render each input's transcript")
    tr.add_argument("--output-dir", type=Path, default=None,
                    help="write DIR/<input name>.<format> per input instead of stdout (inputs of the same name are "
                         "refused before any work)")
    tr.add_argument("--max-files-in-flight", type=int, default=None,
                    help="inputs decoded and on the engine at once; the rest wait undecoded (default: --max-num-seqs)")
    add_params_arguments(tr)
    EngineArgs.add_cli_args(tr)
    serve = commands.add_parser("serve", help="run the OpenAI-compatible server (the same as python -m "
                                "vllm_whisper.entrypoints.api_server)", formatter_class=DefaultsHelpFormatter,
                                description="Serve MODEL on the OpenAI-compatible audio API.")
    add_server_arguments(serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_with_one_line_errors(lambda: _run(argv))


def serve_main(argv: Sequence[str], prog: str | None = None) -> int:
    """`python -m vllm_whisper.entrypoints.api_server ARGS`: the server's flags alone, run as `serve` is."""
    argv = list(argv)
    return run_with_one_line_errors(lambda: serve(build_server_parser(prog).parse_args(argv), argv))


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args, argv[argv.index("serve") + 1:])
    return transcribe(args)


# --- serve -------------------------------------------------------------------------------------------------
def serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Check the options, bind the port (a busy one fails here, before anything loads), then start the server."""
    from vllm_whisper.entrypoints.listen_socket import bind_server_socket

    resolve_model_argument(args, argv)
    _engine_args(args)
    if getattr(args, "ray", False):  # Serve's proxy binds the port; the replicas load the model
        from vllm_whisper.entrypoints.api_server import run_server

        run_server(args)
        return 0
    sock = bind_server_socket(args.host, args.port)
    try:
        from vllm_whisper.entrypoints.api_server import run_server
    except BaseException:
        sock.close()
        raise
    run_server(args, sock=sock)
    return 0


# --- transcribe --------------------------------------------------------------------------------------------
def transcribe(args: argparse.Namespace) -> int:
    files: list[str] = args.files
    fmt = args.output_format
    if fmt not in STDOUT_FORMATS_FOR_MANY and len(files) > 1 and args.output_dir is None:
        raise UsageError(f"{fmt} output of several files needs --output-dir (or use --output-format jsonl)")
    if args.max_files_in_flight is not None and args.max_files_in_flight < 1:
        raise UsageError(f"--max-files-in-flight must be at least 1, got {args.max_files_in_flight}")
    engine_args = _engine_args(args)
    try:
        params = params_from_cli_args(args, engine_args.create_engine_config().default_max_new_tokens)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    _check_inputs_exist(files)
    paths = output_paths(files, args.output_dir, fmt) if args.output_dir is not None else None
    llm = _load(engine_args, params.task)  # the slow part, once every cheap check has passed

    from vllm_whisper.entrypoints.result_writer import ResultWriter

    writer = ResultWriter(files, fmt, params.task, params.word_timestamps, paths)
    progress = ProgressBar(len(files))
    results = llm.transcribe_iter(files, params, errors="yield", max_files_in_flight=args.max_files_in_flight)
    try:
        for index, outcome in results:
            progress.clear()
            if isinstance(outcome, Exception):
                writer.error(index, outcome)
                progress.advance()
            else:
                writer.result(index, outcome)
                progress.advance(outcome.duration)
    except KeyboardInterrupt:
        progress.close()
        return fail(f"interrupted: {writer.written} of {len(files)} results were written and are complete; the "
                    "others were not", INTERRUPTED_EXIT)
    except BrokenPipeError:  # e.g. `| head -1`: the reader is gone; stop quietly, as other commands do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        results.close()  # aborts whatever is still on the engine
    progress.close()
    return 1 if writer.failed else 0


def _check_inputs_exist(files: Sequence[str]) -> None:
    """Every input must be a readable file before any work starts (a typo fails at once, not after loading)."""
    problems = []
    for file in files:
        path = Path(file)
        if not path.exists():
            problems.append(f"no such file: {file}")
        elif path.is_dir():
            problems.append(f"{file} is a directory (give the audio files in it, e.g. {file}/*.wav)")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UsageError(f"{problems[0]}{more}; check the paths (nothing was transcribed)")


def _engine_args(args: argparse.Namespace) -> EngineArgs:
    try:
        return EngineArgs.from_cli_args(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _load(engine_args: EngineArgs, task: str):
    """The LLM for these options; a model that cannot be loaded (or cannot translate) is a UsageError."""
    from vllm_whisper.entrypoints.llm import LLM

    try:
        llm = LLM(engine_args=engine_args)
    except ValueError as exc:  # ModelLoadError, a KV cache too small for one sequence, ...
        raise UsageError(str(exc)) from exc
    if task == "translate" and not llm.tokenizer.is_multilingual:
        raise UsageError(f"The English-only model {engine_args.model!r} cannot translate; use a multilingual model "
                         "such as base.")
    return llm


if __name__ == "__main__":
    sys.exit(main())
