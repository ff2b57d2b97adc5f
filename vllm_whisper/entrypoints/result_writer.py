"""Writes each input's result the moment it finishes, for `vllm-whisper transcribe`.

- jsonl on stdout: one line per input in completion order, each naming its file: {"file", "text", "language",
  "duration"}, or {"file", "error"} for an input that failed; flushed line by line.
- text on stdout: input order (text lines do not name their file): a file's text is printed once it and every
  file before it are finished.
- any format with --output-dir: one file per input (see output_files.py), written atomically as it finishes.
- one srt / vtt / json / verbose_json / tsv on stdout: the single input's body.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, TextIO

from vllm_whisper.entrypoints.output_files import write_atomically
from vllm_whisper.transcribe.result import TranscriptionResult


@dataclass
class ResultWriter:
    """Where and how results go; counts what was written."""

    files: Sequence[str]  # the inputs, as given
    output_format: str
    task: str
    word_timestamps: bool
    output_paths: Sequence[Path] | None = None  # one per input with --output-dir, else None (stdout)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    written: int = 0  # results out (printed or in their file)
    failed: int = 0
    _held: dict[int, str | None] = field(default_factory=dict)  # text mode: finished out of input order
    _next_in_order: int = 0

    def result(self, index: int, result: TranscriptionResult) -> None:
        if self.output_format == "jsonl":
            body = json.dumps({"file": self.files[index], "text": result.text, "language": result.language,
                               "duration": result.duration}, ensure_ascii=False) + "\n"
        else:
            from vllm_whisper.outputs.formats import render_text

            granularities = ("segment", "word") if self.word_timestamps else ("segment",)
            body = render_text(result, self.output_format, task=self.task, timestamp_granularities=granularities)
        if self.output_paths is not None:
            write_atomically(self.output_paths[index], body)
            self.written += 1
        elif self.output_format == "text":
            self._in_input_order(index, body)
        else:
            self._print(body)
            self.written += 1

    def error(self, index: int, error: Exception) -> None:
        """An input that could not be transcribed: a line on stderr (and in the jsonl stream); the others go on."""
        self.failed += 1
        print(f"error: {error}", file=self.stderr, flush=True)
        if self.output_format == "jsonl" and self.output_paths is None:
            self._print(json.dumps({"file": self.files[index], "error": str(error)}, ensure_ascii=False) + "\n")
        elif self.output_format == "text" and self.output_paths is None:
            self._in_input_order(index, None)

    def _in_input_order(self, index: int, body: str | None) -> None:
        self._held[index] = body
        while self._next_in_order in self._held:
            ready = self._held.pop(self._next_in_order)
            if ready is not None:
                self._print(ready)
                self.written += 1
            self._next_in_order += 1

    def _print(self, body: str) -> None:
        self.stdout.write(body)
        self.stdout.flush()
