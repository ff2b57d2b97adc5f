"""Every entry point (`vllm-whisper transcribe`, `vllm-whisper serve`, `python -m
vllm_whisper.entrypoints.api_server`) reports the mistakes a user can fix as one line on stderr with the fix in
it and exit status 2, never a traceback; a busy port fails before the model loads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "2"}
SERVER = ("-m", "vllm_whisper.entrypoints.api_server")
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")


def vllm_whisper(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "vllm-whisper"
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "vllm_whisper.entrypoints.cli"]
    return [*prefix, *args]


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def outside_the_venv(*args: str) -> list[str]:
    """The venv's interpreter without its site-packages (-S): what running from a shell without `source
    .venv/bin/activate` looks like (no torch, no numpy), with our sources still importable."""
    return [sys.executable, "-S", *args]


def run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), ENV.get("PYTHONPATH")]))}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


CASES = [
    pytest.param(lambda clip: vllm_whisper("transcribe", clip, "--model", "large-v3"),
                 ["offline alias (tiny.en, base)", "local directory", "hub id", "openai/whisper-large-v3",
                  "Systran/faster-whisper-large-v3"], id="transcribe-size-name-model"),
    pytest.param(lambda clip: python(*SERVER, "--model", "no-such-model", "--port", "0"),
                 ["'no-such-model' not found", "tiny.en, base", "openai/whisper-small"], id="api-server-unknown-model"),
    pytest.param(lambda clip: python(*SERVER, "tiny.en", "--model", "base", "--ray", "--port", "0"),
                 ["--ray serves one model per Serve app", "one `vllm-whisper serve MODEL --ray` per model"],
                 id="api-server-ray-several-models"),
    pytest.param(lambda clip: vllm_whisper("transcribe", clip, "missing.wav"),
                 ["no such file: missing.wav", "nothing was transcribed"], id="transcribe-missing-input"),
    pytest.param(lambda clip: vllm_whisper("transcribe", clip, "--device", "cuda"),
                 ["no CUDA GPU", "--device cpu"], id="transcribe-cuda-without-gpu", marks=NO_GPU),
    pytest.param(lambda clip: vllm_whisper("serve", "tiny.en", "--device", "cuda", "--port", "0"),
                 ["no CUDA GPU", "--device cpu"], id="serve-cuda-without-gpu", marks=NO_GPU),
    pytest.param(lambda clip: outside_the_venv("-m", "vllm_whisper.entrypoints.cli", "transcribe", clip),
                 ["cannot be imported", "source .venv/bin/activate"], id="transcribe-outside-the-venv"),
    pytest.param(lambda clip: outside_the_venv(*SERVER, "--port", "0"),
                 ["cannot be imported", "source .venv/bin/activate"], id="api-server-outside-the-venv"),
    pytest.param(lambda clip: vllm_whisper("serve", "base", "--model", "tiny.en", "--models-dir", "no/such/dir"),
                 ["--models-dir no/such/dir is not a directory"], id="serve-missing-models-dir"),
    pytest.param(lambda clip: python(*SERVER, "--max-num-seqs", "0", "--port", "0"),
                 ["max_num_seqs must be at least 1", "--max-num-seqs"], id="api-server-bad-engine-value"),
    pytest.param(lambda clip: vllm_whisper("transcribe", clip, "--language", "klingon"),
                 ["Unsupported language 'klingon'", "ISO 639-1"], id="transcribe-bad-language"),
    pytest.param(lambda clip: vllm_whisper("transcribe", clip, "--beam-size", "0"),
                 ["beam_size must be at least 1"], id="transcribe-bad-option"),
    pytest.param(lambda clip: vllm_whisper("transcribe", clip, clip, "--output-format", "srt"),
                 ["needs --output-dir"], id="transcribe-several-srt-to-stdout"),
]


@pytest.mark.parametrize("make_argv, phrases", CASES)
def test_error_is_one_line_with_exit_status_2(make_argv, phrases, fox_clip):
    done = run(make_argv(str(fox_clip.path)))
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr[-3000:]
    for phrase in phrases:
        assert phrase in done.stderr, (phrase, done.stderr)


@pytest.mark.parametrize("entry", ["vllm-whisper serve", "python -m api_server"])
def test_a_busy_port_fails_within_2_s_before_the_model_loads(entry):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        argv = vllm_whisper("serve", "tiny.en", "--port", port) if entry == "vllm-whisper serve" else \
            python(*SERVER, "--model", "tiny.en", "--port", port)
        started = time.monotonic()
        done = run(argv)
        elapsed = time.monotonic() - started
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == f"error: port {port} on 127.0.0.1 is already in use (another server?); choose another " \
                          "with --port, or stop the process that holds it\n"
    assert elapsed < 2.0, f"took {elapsed:.2f} s: the port must be checked before torch and the model load"


@pytest.mark.parametrize("value, accepted", [("0", 0.0), ("2.5", 2.5), ("-1", None), ("inf", None), ("nan", None)])
def test_realtime_turn_yield_takes_zero_or_more_seconds(value, accepted, capsys):
    """argparse's error names the flag and the rule (exit 2, after its usage line, as for every argparse error)."""
    from vllm_whisper.entrypoints.server_args import build_server_parser

    parser = build_server_parser("vllm-whisper serve")
    if accepted is not None:
        assert parser.parse_args(["--realtime-turn-yield-seconds", value]).realtime_turn_yield_seconds == accepted
        return
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--realtime-turn-yield-seconds", value])
    assert exited.value.code == 2
    assert f"argument --realtime-turn-yield-seconds: must be a number of seconds, 0 or more, got {value}" in \
        capsys.readouterr().err
