"""The `vllm-whisper transcribe` command, run as a user runs it (a subprocess of the installed script)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

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
