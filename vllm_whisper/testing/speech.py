"""Speech with a known transcript, synthesised by Debian's text-to-speech programs, for tests and benchmarks.

Engines: flite (voices slt, awb, rms, kal16), festival's text2wave with the US slt HTS voice, and espeak-ng
(many languages). Output is a WAV at the engine's native rate; load it with vllm_whisper.audio.load_audio.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Harvard sentences (IEEE 1969, public domain): phonetically balanced, short, unambiguous spelling.
HARVARD_SENTENCES: tuple[str, ...] = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
)

FLITE_VOICES = ("slt", "awb", "rms", "kal16")
FESTIVAL_VOICE = "cmu_us_slt_arctic_hts"
# (engine, voice) pairs used in rotation for English test speech.
SPEAKERS: tuple[tuple[str, str], ...] = (
    *(("flite", v) for v in FLITE_VOICES), ("festival", FESTIVAL_VOICE), ("espeak-ng", "en-us"),
)


class SpeechSynthesisError(RuntimeError):
    """A text-to-speech program is missing or failed."""


@dataclass(frozen=True)
class Utterance:
    """A synthesised clip and the text it speaks."""

    path: Path
    text: str
    engine: str
    voice: str


def _require(program: str, package: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise SpeechSynthesisError(f"{program} is not installed: apt-get install {package}")
    return found


def synthesize(
    text: str, path: Path, engine: str = "flite", voice: str = "slt", words_per_minute: int | None = None
) -> Utterance:
    """Speak `text` into the WAV file `path` with the given engine and voice (espeak-ng: a language code).

    words_per_minute slows espeak-ng down (its default of 175 is hard for small models in other languages).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if engine == "flite":
        command = [_require("flite", "flite"), "-voice", voice, "-t", text, "-o", str(path)]
        stdin = None
    elif engine == "festival":
        command = [_require("text2wave", "festival festvox-us-slt-hts"), "-o", str(path), "-eval", f"(voice_{voice})"]
        stdin = text
    elif engine == "espeak-ng":
        rate = ["-s", str(words_per_minute)] if words_per_minute else []
        command = [_require("espeak-ng", "espeak-ng"), "-v", voice, *rate, "-w", str(path), text]
        stdin = None
    else:
        raise ValueError(f"unknown speech engine {engine!r}; use flite, festival or espeak-ng")
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not path.is_file() or path.stat().st_size < 100:
        raise SpeechSynthesisError(f"{engine} failed for {text!r}: {done.stderr.strip()[:300]}")
    return Utterance(path, text, engine, voice)


def english_corpus(folder: Path, count: int = len(HARVARD_SENTENCES)) -> list[Utterance]:
    """`count` Harvard sentences spoken by rotating flite voices, festival and espeak-ng."""
    clips = []
    for i in range(count):
        engine, voice = SPEAKERS[i % len(SPEAKERS)]
        text = HARVARD_SENTENCES[i % len(HARVARD_SENTENCES)]
        clips.append(synthesize(text, Path(folder) / f"clip{i:03d}_{engine}_{voice}.wav", engine, voice))
    return clips


_PUNCTUATION = re.compile(r"[^\w\s']")
_NUMBER_WORDS = {"50": "fifty", "2": "two", "4": "four"}


def normalize_text(text: str) -> str:
    """Lower-case, drop punctuation and collapse spaces, so WER counts words rather than formatting."""
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words)


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER of normalised texts (jiwer)."""
    import jiwer

    return jiwer.wer([normalize_text(r) for r in references], [normalize_text(h) for h in hypotheses])


def paragraph_corpus(folder: Path, count: int, sentences_per_clip: int, gap_seconds: float = 0.4) -> list[Utterance]:
    """`count` clips of `sentences_per_clip` Harvard sentences each (one speaker per clip, short pauses between
    sentences), so a clip fills most of a 30 s window as continuous speech does."""
    import numpy as np

    from vllm_whisper.audio.decode import load_audio
    from vllm_whisper.testing.encode import encode_audio

    folder = Path(folder)
    gap = np.zeros(int(gap_seconds * 16000), dtype=np.float32)
    clips = []
    for i in range(count):
        engine, voice = SPEAKERS[i % len(SPEAKERS)]
        chosen = [HARVARD_SENTENCES[(i * sentences_per_clip + k) % len(HARVARD_SENTENCES)]
                  for k in range(sentences_per_clip)]
        parts = []
        for k, text in enumerate(chosen):
            path = folder / f"p{i:03d}_{k}.wav"
            parts += [load_audio(synthesize(text, path, engine, voice).path), gap]
        out = encode_audio(np.concatenate(parts), 16000, folder / f"paragraph{i:03d}.wav")
        clips.append(Utterance(out, " ".join(chosen), engine, voice))
    return clips
