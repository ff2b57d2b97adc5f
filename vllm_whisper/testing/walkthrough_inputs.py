"""The audio files the README's commands name (talk.mp3, a.wav, speech_es.ogg, ...), synthesised into a folder so
the walkthrough can run the commands as written: flite / espeak-ng speech, encoded with PyAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vllm_whisper.testing.encode import encode_audio
from vllm_whisper.testing.speech import HARVARD_SENTENCES, synthesize

RATE = 16000
SPANISH = "El rápido zorro marrón salta sobre el perro perezoso."


def _speak(text: str, scratch: Path, name: str, engine: str = "flite", voice: str = "slt") -> np.ndarray:
    from vllm_whisper.audio.decode import load_audio

    return load_audio(synthesize(text, scratch / f"{name}.wav", engine, voice).path)


def _with_pauses(clips: list[np.ndarray], gap_seconds: float) -> np.ndarray:
    gap = np.zeros(int(gap_seconds * RATE), dtype=np.float32)
    return np.concatenate([part for clip in clips for part in (clip, gap)])


def write_readme_inputs(folder: Path, scratch: Path) -> dict[str, Path]:
    """Write every input file the README's commands name into `folder`; returns them by name."""
    folder, scratch = Path(folder), Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    fox = _speak("The quick brown fox jumps over the lazy dog.", scratch, "fox")
    sentences = [_speak(text, scratch, f"h{i}", voice=("slt", "awb", "rms")[i % 3])
                 for i, text in enumerate(HARVARD_SENTENCES[:12])]
    spanish = _speak(SPANISH, scratch, "es", engine="espeak-ng", voice="es")
    long_talk = _with_pauses(sentences, 0.8)  # ~40 s: more than one 30 s window
    audio = {
        "talk.mp3": fox, "talk.wav": fox, "speech.wav": fox,  # speech.wav: 16 kHz mono PCM16, as realtime needs
        "interview.m4a": _with_pauses(sentences[:2], 0.5),
        "a.wav": sentences[2], "b.wav": sentences[3], "b.mp3": sentences[3],
        "speech_es.ogg": spanish,
        "lecture.mp3": long_talk, "long.mp3": long_talk,
    }
    return {name: encode_audio(samples, RATE, folder / name) for name, samples in audio.items()}
