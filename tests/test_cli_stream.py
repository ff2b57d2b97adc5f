"""`vllm-whisper transcribe` streams: each file's result comes out the moment that file finishes, inputs are
decoded lazily (10,000 inputs in bounded memory), a progress bar shows on a terminal only, output names that
collide are refused before any work, and Ctrl-C keeps every finished result intact (exit 130)."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from vllm_whisper.audio.decode import load_audio

ENV = {**os.environ, "OMP_NUM_THREADS": "2"}
SMALL_ENGINE = ("--kv-cache-space", "0.25", "--quantization", "int8")  # int8: ~2x faster on the CPU


def command(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "vllm-whisper"
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "vllm_whisper.entrypoints.cli"]
    return [*prefix, *args]


def write_wav(path: Path, audio: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


@pytest.fixture(scope="module")
def long_wav(english_clips, tmp_path_factory) -> Path:
    """~90 s of speech: the test sentences one after another with 1.2 s pauses."""
    return speech_wav(english_clips, tmp_path_factory.mktemp("long") / "long.wav", 90)


@pytest.fixture(scope="module")
def five_minute_wav(english_clips, tmp_path_factory) -> Path:
    """~300 s of speech (ten windows decoded one after another): still running well after a short file is done,
    however fast the engine gets."""
    return speech_wav(english_clips, tmp_path_factory.mktemp("long") / "five_minutes.wav", 300)


def default_sigint() -> None:
    """In the child: SIGINT back to its default, so Python installs its Ctrl-C handler even when this test runs
    in a background job of a non-interactive shell (which starts its children with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def speech_wav(english_clips, path: Path, seconds: float) -> Path:
    gap = np.zeros(int(1.2 * 16000), np.float32)
    parts: list[np.ndarray] = []
    while sum(len(p) for p in parts) < seconds * 16000:
        parts += [load_audio(str(english_clips[len(parts) // 2 % len(english_clips)].path)), gap]
    return write_wav(path, np.concatenate(parts))


def test_the_short_files_line_comes_out_long_before_the_long_file_finishes(long_wav, fox_clip):
    started = time.monotonic()
    process = subprocess.Popen(command("transcribe", str(long_wav), str(fox_clip.path), *SMALL_ENGINE),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    arrivals = [(time.monotonic(), json.loads(line)) for line in process.stdout]
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 0, stderr
    ended = time.monotonic()
    (short_at, short), (long_at, long) = arrivals
    assert short["file"] == str(fox_clip.path) and "lazy dog" in short["text"].lower()
    assert long["file"] == str(long_wav) and long["duration"] > 89 and len(long["text"].split()) > 150
    # The short file was batched with the long file's first window and printed at once; the long file needed
    # several more windows (each conditioned on the previous one) before its line.
    assert ended - short_at > 2.0 and long_at - short_at > 2.0, (short_at - started, long_at - started)
    assert stderr == ""  # no progress bar when stderr is not a terminal


def test_outputs_of_the_same_name_are_refused_before_any_work(fox_clip, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copyfile(fox_clip.path, tmp_path / folder / "x.wav")
    out = tmp_path / "out"
    started = time.monotonic()
    done = subprocess.run(command("transcribe", "a/x.wav", "b/x.wav", "--output-format", "srt", "--output-dir",
                                  str(out)), capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "a/x.wav and b/x.wav would both be written to" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    assert time.monotonic() - started < 5  # refused before the model was loaded


def test_ctrl_c_keeps_the_finished_results_and_exits_130(five_minute_wav, fox_clip, tmp_path):
    out = tmp_path / "subs"
    process = subprocess.Popen(command("transcribe", str(five_minute_wav), str(fox_clip.path), "--output-format", "srt",
                                       "--output-dir", str(out), *SMALL_ENGINE),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               preexec_fn=default_sigint)
    deadline = time.monotonic() + 240
    while not (out / "fox.srt").exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the short file's result never appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.count("\n") == 1 and stderr.startswith("error: interrupted: 1 of 2 results were written")
    assert "Traceback" not in stderr
    assert sorted(p.name for p in out.iterdir()) == ["fox.srt"]  # no half-written five_minutes.srt, no temporary file
    assert re.fullmatch(r"1\n00:00:0\d,\d{3} --> 00:00:0\d,\d{3}\n.*lazy dog\.?\n\n", (out / "fox.srt").read_text(),
                        re.IGNORECASE | re.DOTALL)


def test_a_thousand_files_with_a_progress_bar_on_a_terminal(tmp_path):
    """Many inputs on one command line, each printed as it finishes; stderr is a terminal, so the bar shows."""
    count = 1000
    write_wav(tmp_path / "f0.wav", np.zeros(1600, np.float32))
    for i in range(1, count):
        shutil.copyfile(tmp_path / "f0.wav", tmp_path / f"f{i}.wav")
    names = [f"f{i}.wav" for i in range(count)]
    controller, terminal = pty.openpty()
    process = subprocess.Popen(command("transcribe", *names, *SMALL_ENGINE), stdout=subprocess.PIPE,
                               stderr=terminal, text=True, env=ENV, cwd=tmp_path)
    os.close(terminal)
    shown = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the child closed the terminal
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    lines = [json.loads(line) for line in process.stdout]
    assert process.wait(timeout=300) == 0
    reader.join(timeout=10)
    os.close(controller)
    assert sorted(line["file"] for line in lines) == sorted(names)
    assert all(line["text"] == "" and line["duration"] == 0.1 for line in lines)
    text = shown.decode(errors="replace")
    assert f"{count}/{count} files" in text and "s audio" in text and "x real time" in text


def test_transcribe_iter_is_lazy_bounded_and_in_completion_order(fox_clip):
    """10,000 inputs from a generator: at most max_files_in_flight are pulled ahead of the results, a file that
    cannot be decoded is yielded as its error, and results come as files finish (not in input order)."""
    from vllm_whisper.audio.decode import AudioDecodeError
    from vllm_whisper.entrypoints.llm import LLM

    llm = LLM(model="tiny.en", quantization="int8", kv_cache_space=0.25)
    count, in_flight = 10_000, 4
    speech = load_audio(str(fox_clip.path))
    pulled = 0
    pulled_speech = [0]

    def speech_inputs():
        for _ in range(3):
            pulled_speech[0] += 1
            yield speech

    def inputs():
        nonlocal pulled
        for i in range(count):
            pulled += 1
            yield speech if i == 0 else b"not audio" if i == 1 else np.zeros(800, np.float32)

    ahead, seen = [], 0
    for _ in llm.transcribe_iter(speech_inputs(), max_files_in_flight=2):
        ahead.append(pulled_speech[0] - seen)  # decoded inputs not yet handed out, this one included
        seen += 1
    assert max(ahead) == 2  # two speech files were decoding together, never more

    order, most_ahead, outcomes = [], 0, {}
    for index, outcome in llm.transcribe_iter(inputs(), max_files_in_flight=in_flight, errors="yield"):
        most_ahead = max(most_ahead, pulled - len(order))
        order.append(index)
        outcomes[index] = outcome
    assert sorted(order) == list(range(count))
    assert most_ahead <= in_flight
    assert order[0] != 0 and "lazy dog" in outcomes[0].text.lower()  # the speech finished after the silent ones
    assert isinstance(outcomes[1], AudioDecodeError)
    with pytest.raises(AudioDecodeError):
        list(llm.transcribe_iter([b"not audio"]))
