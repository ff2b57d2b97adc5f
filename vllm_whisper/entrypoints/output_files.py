"""Where `vllm-whisper transcribe --output-dir DIR` writes each input's result, and how.

Each input FILE gives DIR/<FILE's name without its extension>.<format's extension>. Two inputs that would give
the same output file (a/x.wav and b/x.wav, or one file given twice) are refused before any work starts: nothing
is ever silently overwritten within a run. Files are written atomically (a temporary file in DIR, then a rename),
so an interrupted run leaves every output either complete or absent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from vllm_whisper.entrypoints.cli_errors import UsageError

EXTENSIONS = {"jsonl": "json", "text": "txt", "verbose_json": "json"}  # the others are their own extension


def output_paths(files: Sequence[str], output_dir: Path, output_format: str) -> list[Path]:
    """The output path of each input, in input order; UsageError when two inputs would share one."""
    extension = EXTENSIONS.get(output_format, output_format)
    paths = [output_dir / f"{Path(file).stem}.{extension}" for file in files]
    first_input: dict[Path, str] = {}
    for file, path in zip(files, paths):
        if path in first_input:
            other = first_input[path]
            if os.path.abspath(other) == os.path.abspath(file):
                raise UsageError(f"{file} is given twice; give each input once (nothing was transcribed)")
            raise UsageError(f"{other} and {file} would both be written to {path}: output files are named after "
                             "their input's name, so transcribe inputs of the same name in separate runs or into "
                             "different --output-dir folders (nothing was transcribed)")
        first_input[path] = file
    return paths


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename: readers (and an
    interrupted run) see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
