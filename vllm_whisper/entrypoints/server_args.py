"""The server's command line (`vllm-whisper serve MODEL`, `python -m vllm_whisper.entrypoints.api_server`).

Kept free of heavy imports (torch, FastAPI), so the command line is parsed and the port bound in a fraction of a
second, before anything slow is loaded.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from vllm_whisper.engine_args import EngineArgs
from vllm_whisper.entrypoints.cli_errors import UsageError
from vllm_whisper.entrypoints.help_format import DefaultsHelpFormatter
from vllm_whisper.entrypoints.ray_serve.options import add_ray_arguments

MODEL_FLAG = "--" + "model"  # defined by EngineArgs; spelt out here only to find it among the given arguments


def build_server_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="vllm-whisper OpenAI-compatible speech-to-text server",
                                     formatter_class=DefaultsHelpFormatter)
    add_server_arguments(parser)
    return parser


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The model as an optional positional (vLLM's `serve MODEL`), the engine flags (EngineArgs, shared with every
    entry point), then the server-only flags."""
    parser.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                        help=f"the model to serve, as {MODEL_FLAG} (which is still accepted); default: {MODEL_FLAG}'s. "
                             f"Give {MODEL_FLAG} again (or --models-dir) to serve several models, routed by the "
                             "request's `model`; the first is the default")
    EngineArgs.add_cli_args(parser)
    group = parser.add_argument_group("several models", "more than one model behind one server (see README)")
    group.add_argument("--models-dir", default=None, metavar="DIR",
                       help="serve every model subdirectory of DIR as well, each named by its directory name")
    group.add_argument("--model-ttl", type=_positive_seconds, default=None, metavar="SECONDS",
                       help="unload a model other than the first after it has been idle this long, freeing its "
                            "memory; it loads again on its next request (default: never unload). With a TTL the "
                            "other models load on their first request instead of at start-up")
    group.add_argument("--models-memory-budget-gib", type=_positive_gib, default=None, metavar="GIB",
                       help="most GiB the loaded models may take together (checkpoint bytes + --kv-cache-space "
                            "each); a model that does not fit first unloads idle ones, else its requests get 503 "
                            "(default: no budget)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port, logged at start-up)")
    parser.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"),
                        help="require `Authorization: Bearer KEY` on /v1 routes (default: $VLLM_API_KEY if set, "
                             "else no key)")  # the help never prints the key itself
    parser.add_argument("--max-audio-filesize-mb", type=float, default=25.0)
    parser.add_argument("--max-audio-duration", type=float, default=7200.0,
                        help="longest decoded audio accepted, in seconds (checked while decoding, before resampling; "
                             "longer uploads get a 400 with code audio_too_long)")
    parser.add_argument("--upload-read-timeout", type=float, default=30.0,
                        help="seconds a client may pause inside an upload body before it gets a 408")
    parser.add_argument("--header-read-timeout", type=float, default=30.0,
                        help="seconds a client has to send a request's line and headers (all of them; trickling "
                             "does not extend it) before it gets a 408 and is disconnected")
    parser.add_argument("--max-connections", type=int, default=2048,
                        help="open connections served at once; beyond them new ones get a 503 from uvicorn")
    parser.add_argument("--shutdown-timeout", type=float, default=30.0,
                        help="on SIGTERM, seconds running requests and streams get to finish before they are ended "
                             "with a final error event (new requests are refused meanwhile)")
    parser.add_argument("--restart-engine-on-failure", action="store_true",
                        help="when the engine thread fails outside any one request, fail the requests in flight and "
                             "start a fresh engine on the loaded model (default: stay up answering 503, so a "
                             "supervisor restarts the process)")
    parser.add_argument("--protect-metrics", action="store_true",
                        help="require the --api-key on /metrics as well (it is open by default for Prometheus)")
    parser.add_argument("--max-realtime-sessions", type=int, default=32,
                        help="open realtime WebSocket sessions at once; beyond them a new one gets 429 (or close code "
                             "1013 where the client cannot read a denial response). Each also counts toward "
                             "--max-waiting-requests' admission limit")
    parser.add_argument("--realtime-turn-yield-seconds", type=_non_negative_seconds, default=15.0, metavar="SECONDS",
                        help="on a busy engine, a committed realtime turn's final pass lets uploads go first for at "
                             "most this long, then goes ahead of later ones (0: never yields; larger: uploads' "
                             "latency over live turns')")
    parser.add_argument("--max-waiting-requests", type=int, default=256,
                        help="requests accepted beyond --max-num-seqs before answering 429")
    parser.add_argument("--allowed-origins", default=None,
                        help='CORS origins: a JSON list (\'["https://a.example"]\') or a comma-separated list')
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    parser.add_argument("--log-stats-interval", type=_positive_seconds, default=10.0,
                        help="seconds between the periodic engine stats lines (logged while the engine has work)")
    parser.add_argument("--disable-log-stats", action="store_true",
                        help="no periodic engine stats lines (/metrics is still served)")
    add_ray_arguments(parser)


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value}")
    return seconds


def _non_negative_seconds(value: str) -> float:
    seconds = float(value)
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, got {value}")
    return seconds


def _positive_gib(value: str) -> float:
    gib = float(value)
    if not gib > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of GiB, got {value}")
    return gib


def resolve_model_argument(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """`serve A --model B ...`: args.models lists the served models in order (the positional first, repeats
    dropped) and args.model is the first; an empty list means the default model or --models-dir's alone."""
    tag = getattr(args, "model_tag", None)
    models = list(dict.fromkeys(([tag] if tag is not None else []) + model_flag_values(argv)))
    if models:
        args.model = models[0]
    elif getattr(args, "models_dir", None) is None:
        models = [args.model]
    args.models = models
    models_dir = getattr(args, "models_dir", None)
    if models_dir is not None and not os.path.isdir(models_dir):
        raise UsageError(f"--models-dir {models_dir} is not a directory; give the folder whose subdirectories are "
                         "the models")
    if getattr(args, "ray", False) and (len(models) > 1 or getattr(args, "models_dir", None)):
        raise UsageError("--ray serves one model per Serve app; run one `vllm-whisper serve MODEL --ray` per model "
                         f"(drop the extra {MODEL_FLAG} / --models-dir)")


def model_flag_values(argv: Sequence[str]) -> list[str]:
    """Every value of --model among the arguments (spelt --model X, --model=X or an abbreviation), in order."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument(MODEL_FLAG, dest="model", action="append", default=[])
    known, _ = probe.parse_known_args([a for a in argv if a not in ("-h", "--help")])
    return known.model
