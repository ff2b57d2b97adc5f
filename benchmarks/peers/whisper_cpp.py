"""whisper.cpp as a CPU peer (through pywhispercpp): transcribe files one after another on a converted ggml model.

Greedy (no temperature fallback), English, no conditioning on previous text, no timestamps unless asked for; files
are decoded by our own audio loader so every system reads audio the same way. The model file comes from
convert_to_ggml.py.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "pip install 'pywhispercpp>=1.5'"


class WhisperCppUnavailable(RuntimeError):
    """pywhispercpp is not installed (or cannot load on this CPU); the message says how to fix it."""


@dataclass
class WhisperCppRun:
    """Texts in input order, each file's segment starts (seconds), and the wall time of the whole list."""

    texts: list[str]
    starts: list[list[float]]
    wall_s: float
    tokens: int


def require_pywhispercpp():
    """pywhispercpp's Model class, or WhisperCppUnavailable saying how to install it."""
    try:
        from pywhispercpp.model import Model
    except ImportError as exc:  # also the AVX2-only wheel failing to load on an older CPU
        raise WhisperCppUnavailable(f"pywhispercpp is not usable ({exc}): {INSTALL_HINT}") from exc
    return Model


def load_whisper_cpp(model_file: Path, threads: int):
    """A pywhispercpp Model on `model_file` with `threads` threads, whisper.cpp's own logging silenced."""
    Model = require_pywhispercpp()
    if not Path(model_file).is_file():
        raise FileNotFoundError(f"whisper.cpp model {model_file} does not exist; make it with convert_to_ggml.py")
    return Model(str(model_file), n_threads=threads, redirect_whispercpp_logs_to=None, print_progress=False,
                 print_realtime=False, print_timestamps=False, no_context=True, language="en",
                 no_timestamps=True, temperature=0.0, temperature_inc=0.0, greedy={"best_of": 1})


def transcribe_files(model, paths: list, timestamps: bool = False, progress=None) -> WhisperCppRun:
    """Decode and transcribe each file (a path or a 16 kHz float32 array) in turn; `progress` optionally wraps the
    list (a tqdm-like callable). timestamps=True decodes timestamp tokens too, as our engine does by default."""
    from vllm_whisper.audio import load_audio

    texts, starts, tokens = [], [], 0
    start = time.perf_counter()
    for item in (progress(paths) if progress else paths):
        segments = model.transcribe(load_audio(item), no_timestamps=not timestamps)
        texts.append("".join(s.text for s in segments).strip())
        starts.append([s.t0 / 100 for s in segments])  # whisper.cpp counts time in 10 ms steps
        tokens += text_tokens(model, len(segments))
    return WhisperCppRun(texts, starts, time.perf_counter() - start, tokens)


def text_tokens(model, n_segments: int) -> int:
    """Tokens whisper.cpp decoded in its last call, special tokens left out (as the other rows count)."""
    import _pywhispercpp as pw

    eot = pw.whisper_token_eot(model._ctx)
    return sum(1 for i in range(n_segments) for j in range(pw.whisper_full_n_tokens(model._ctx, i))
               if pw.whisper_full_get_token_id(model._ctx, i, j) < eot)


def main() -> None:
    """python benchmarks/peers/whisper_cpp.py MODEL.bin FILE... : print each text and the wall time."""
    import os

    if len(sys.argv) < 3:
        raise SystemExit("usage: whisper_cpp.py MODEL.bin FILE [FILE ...]")
    model = load_whisper_cpp(Path(sys.argv[1]), os.cpu_count() or 1)
    run = transcribe_files(model, [Path(p) for p in sys.argv[2:]])
    for text in run.texts:
        print(text)
    print(f"{len(run.texts)} files in {run.wall_s:.2f} s")


if __name__ == "__main__":
    main()
