"""The `vllm-whisper transcribe` command, run as a user runs it (a subprocess of the installed script)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import pytest


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "vllm-whisper"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "vllm_whisper.entrypoints.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})


def test_console_script_is_installed():
    assert (Path(sys.executable).parent / "vllm-whisper").exists() or shutil.which("vllm-whisper")


def test_jsonl_one_line_per_input_and_errors_reported(english_clips, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF this is not audio" * 10)
    done = cli("transcribe", str(english_clips[0].path), str(broken), str(english_clips[1].path),
               "--model", "tiny.en", "--output-format", "jsonl")
    assert done.returncode == 1  # one input failed; the others were still transcribed
    lines = {json.loads(line)["file"]: json.loads(line) for line in done.stdout.splitlines()}  # completion order
    assert set(lines) == {str(english_clips[0].path), str(broken), str(english_clips[1].path)}
    for clip in english_clips[:2]:
        line = lines[str(clip.path)]
        assert set(line) == {"file", "text", "language", "duration"}
        assert line["language"] == "en" and 1.0 < line["duration"] < 6.0
        assert clip.text.split()[-1].strip(".").lower() in line["text"].lower()
    assert set(lines[str(broken)]) == {"file", "error"} and "broken.wav" in done.stderr


def test_text_srt_and_vtt(fox_clip):
    text = cli("transcribe", str(fox_clip.path), "--output-format", "text")
    assert text.returncode == 0 and "lazy dog" in text.stdout.lower()
    srt = cli("transcribe", str(fox_clip.path), "--output-format", "srt")
    assert srt.returncode == 0
    assert re.match(r"1\n00:00:0\d,\d{3} --> 00:00:0\d,\d{3}\n.*lazy dog", srt.stdout, re.IGNORECASE | re.DOTALL)
    vtt = cli("transcribe", str(fox_clip.path), "--output-format", "vtt")
    assert vtt.stdout.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:0")


def test_output_dir_writes_one_file_per_input(english_clips, tmp_path):
    out = tmp_path / "subs"
    done = cli("transcribe", str(english_clips[0].path), str(english_clips[1].path), "--output-format", "srt",
               "--output-dir", str(out))
    assert done.returncode == 0, done.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{c.path.stem}.srt" for c in english_clips[:2])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no-such-model"], "not a local directory"),
        (["--task", "translate"], "cannot translate"),
        (["--language", "klingon"], "Unsupported language"),
        (["--kv-cache-space", "0.001"], "cannot hold one sequence"),
        (["--max-num-seqs", "0"], "max_num_seqs must be at least 1"),
    ],
)
def test_bad_options_exit_2_with_a_message(fox_clip, args, message):
    done = cli("transcribe", str(fox_clip.path), *args)
    assert done.returncode in (1, 2) and message in done.stderr


def test_verbose_json_with_words_parallel_and_vad(tmp_path, fox_clip):
    """The transcription options reach the engine from the command line."""
    done = subprocess.run(
        [sys.executable, "-m", "vllm_whisper.entrypoints.cli", "transcribe", str(fox_clip.path), "--output-format",
         "verbose_json", "--word-timestamps", "--chunking-strategy", "parallel", "--vad-filter",
         "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    body = json.loads((tmp_path / "fox.json").read_text())
    assert body["language"] == "english" and body["segments"]
    words = [w["word"] for w in body["words"]]
    assert "fox" in [w.strip(" .").lower() for w in words]
    assert all(0 <= w["start"] <= w["end"] <= body["duration"] for w in body["words"])


# --- the command line's shape: options generated from TranscriptionParams, vLLM's habits -------------------
def transcribe_parser():
    from vllm_whisper.entrypoints import cli as cli_module

    parsers = next(a for a in cli_module.build_parser()._actions if a.dest == "command").choices
    return parsers["transcribe"], parsers["serve"]


def test_every_transcription_params_field_has_a_flag():
    import dataclasses

    from vllm_whisper.params import TranscriptionParams

    transcribe, _ = transcribe_parser()
    actions = {action.dest: action for action in transcribe._actions}
    for field in dataclasses.fields(TranscriptionParams):
        flag = "--" + field.name.replace("_", "-")
        assert field.name in actions and flag in actions[field.name].option_strings, flag
        assert len(actions[field.name].help) > 20, f"{flag} has no help from the field's docs"


def test_flags_build_the_params_with_the_historical_spellings():
    from vllm_whisper.entrypoints.params_flags import params_from_cli_args

    transcribe, _ = transcribe_parser()

    def params(*flags: str, budget: int = 224):
        return params_from_cli_args(transcribe.parse_args(["a.wav", *flags]), budget)

    default = params()
    assert default.timestamps and default.condition_on_previous_text and default.max_new_tokens == 224
    assert default.temperature == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert params(budget=50).max_new_tokens == 50  # the engine's budget (min(224, max-model-len / 2))
    assert params("--max-new-tokens", "30", budget=50).max_new_tokens == 30
    assert not params("--no-timestamps").timestamps
    assert not params("--no-condition-on-previous-text").condition_on_previous_text
    assert params("--temperature", "0.4").temperature == (0.4, 0.6, 0.8, 1.0)  # one value: the schedule from it
    assert params("--temperature", "0", "0.5").temperature == (0.0, 0.5)  # several: the schedule itself
    assert params("--suppress-tokens").suppress_tokens == ()
    assert params("--suppress-tokens", "1", "2").suppress_tokens == (1, 2)
    assert params("--suppress-tokens", "none").suppress_tokens is None
    assert params("--logprob-threshold", "none").logprob_threshold is None
    varied = params("--seed", "7", "--patience", "2", "--beam-size", "3", "--no-suppress-blank", "--prefix", "Hi",
                    "--no-timestamps", "--vad-filter", "--vad-threshold", "0.3", "--language", "English",
                    "--chunking-strategy", "parallel", "--word-timestamps", "--initial-prompt", "Names.")
    assert (varied.seed, varied.patience, varied.beam_size, varied.suppress_blank, varied.prefix) == (7, 2.0, 3,
                                                                                                    False, "Hi")
    assert varied.vad_filter and varied.vad_threshold == 0.3 and varied.language == "en"
    assert varied.chunking_strategy == "parallel" and varied.word_timestamps and varied.initial_prompt == "Names."
    with pytest.raises(SystemExit):
        transcribe.parse_args(["a.wav", "--task", "summarise"])


@dataclass(frozen=True)
class Options:
    """Made-up options, shaped like fields another change may add to TranscriptionParams.

    top_k: keep the k most likely tokens.
    top_p / min_p: nucleus and minimum-probability filters.
    hotwords: words to favour.
    penalties: one per step.
    """

    top_k: int = 0
    top_p: float = 1.0
    min_p: Optional[float] = None
    hotwords: str | None = None
    penalties: tuple[float, ...] = (1.0,)
    stop_ids: tuple[int, ...] | None = None
    verbose: bool = False
    mode: Literal["fast", "exact"] = "fast"


def test_a_field_of_any_supported_type_gets_a_flag():
    """Fields added to TranscriptionParams later (top_p, penalties, hotwords, ...) appear without CLI changes."""
    from vllm_whisper.entrypoints.params_flags import add_params_arguments

    parser = argparse.ArgumentParser()
    add_params_arguments(parser, Options)
    args = parser.parse_args(["--top-k", "5", "--top-p", "0.9", "--min-p", "none", "--hotwords", "gRPC",
                              "--penalties", "1.1", "1.2", "--stop-ids", "--verbose", "--mode", "exact"])
    assert vars(args) == {"top_k": 5, "top_p": 0.9, "min_p": None, "hotwords": "gRPC", "penalties": [1.1, 1.2],
                          "stop_ids": [], "verbose": True, "mode": "exact"}
    assert parser.parse_args([]).min_p is None and not parser.parse_args(["--no-verbose"]).verbose
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["top_k"] == "keep the k most likely tokens." and helps["min_p"].startswith("nucleus")


def test_every_help_shows_defaults_and_the_version_flag():
    from vllm_whisper import __version__
    from vllm_whisper.entrypoints.api_server import build_parser as server_parser
    from vllm_whisper.entrypoints.help_format import DefaultsHelpFormatter

    transcribe, serve = transcribe_parser()
    for parser in (transcribe, serve, server_parser()):
        formatter = DefaultsHelpFormatter("x")
        for action in parser._actions:
            if action.option_strings and action.dest not in ("help", "version"):
                assert "(default:" in formatter._get_help_string(action), action.option_strings
    assert "(default: min(224, max-model-len / 2))" in " ".join(transcribe.format_help().split())
    os.environ["VLLM_API_KEY"] = "secret-key-in-env"
    try:
        assert "secret-key-in-env" not in server_parser().format_help()  # --help never prints the key
    finally:
        del os.environ["VLLM_API_KEY"]
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"vllm-whisper {__version__}"


def test_serve_takes_the_model_as_a_positional():
    from vllm_whisper.entrypoints.cli_errors import UsageError
    from vllm_whisper.entrypoints.server_args import build_server_parser, resolve_model_argument

    for argv, model in ((["base"], "base"), (["--model", "base"], "base"), ([], "tiny.en"),
                        (["base", "--model", "base"], "base"), (["base", "--model=base", "--port", "1"], "base")):
        args = build_server_parser().parse_args(argv)
        resolve_model_argument(args, argv)
        assert args.model == model, argv
    for argv in (["base", "--model", "tiny.en"], ["base", "--model=tiny.en"]):  # several models: positional first
        args = build_server_parser().parse_args(argv)
        resolve_model_argument(args, argv)
        assert (args.model, args.models) == ("base", ["base", "tiny.en"]), argv
    args = build_server_parser().parse_args(["base", "--model", "tiny.en", "--ray"])
    with pytest.raises(UsageError, match="one model per Serve app"):
        resolve_model_argument(args, ["base", "--model", "tiny.en", "--ray"])
