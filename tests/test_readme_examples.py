"""The README's runnable examples run as written: each block marked `<!-- example: NAME -->` is extracted and
executed against a real server, so the README cannot drift from the API."""

from __future__ import annotations

import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from vllm_whisper.audio.decode import load_audio
from vllm_whisper.testing.server import serve_in_thread

README = Path(__file__).resolve().parents[1] / "README.md"


def example(name: str) -> str:
    match = re.search(rf"<!-- example: {re.escape(name)} -->\n```python\n(.*?)```", README.read_text(), re.S)
    if match is None:
        raise AssertionError(f"README has no example block named {name}")
    return match.group(1)


@pytest.fixture(scope="module")
def server():
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.25") as running:
        yield running


def test_readme_realtime_client_prints_the_transcript(server, fox_clip, tmp_path):
    script = tmp_path / "realtime_client.py"
    script.write_text(example("realtime_client.py"))
    samples = load_audio(fox_clip.path)
    wav_path = tmp_path / "speech.wav"
    with wave.open(str(wav_path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    url = server.base_url.replace("http://", "ws://") + "/v1/realtime"
    done = subprocess.run([sys.executable, str(script), str(wav_path), url, "tiny.en"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    words = done.stdout.lower()
    assert "fox" in words and "lazy dog" in words, done.stdout
