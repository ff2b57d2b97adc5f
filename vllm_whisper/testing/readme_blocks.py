"""The README's code blocks as the walkthrough test reads them: every ```bash and ```python block, in order, with
the marker comments right before it, so no command can be added to the README without being run or excused.

Markers (HTML comments on the lines right before the opening fence):
  <!-- walkthrough: skip REASON -->           the whole block is not run, for REASON
  <!-- walkthrough: skip-lines 1,2 REASON --> those commands of a bash block (1-based, after joining `\\`
                                              continuations; comment-only lines do not count) are not run
  <!-- example: NAME -->                      a python block is the file NAME; a later command runs it
Blocks of any other fence language (```text, or none) are not commands and are never run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

RUNNABLE_LANGUAGES = ("bash", "python")
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*(walkthrough|example):\s*(.*?)\s*-->\s*$")


class ReadmeFormatError(ValueError):
    """The README's blocks or markers are malformed (an unclosed fence, a marker without a reason, ...)."""


@dataclass(frozen=True)
class Command:
    """One command line of a bash block (continuations joined) and the README line it starts on."""

    text: str
    line: int


@dataclass(frozen=True)
class CodeBlock:
    """A ```bash or ```python block: its code, where it starts, and what its markers say."""

    language: str
    code: str
    line: int  # README line of the opening fence
    skip_reason: str | None = None  # the whole block is excused
    skipped_lines: dict[int, str] = field(default_factory=dict)  # command number (1-based) -> reason
    example_name: str | None = None  # an `example:` block is written to this file, not run itself

    def commands(self) -> list[Command]:
        """A bash block's commands: `\\` continuations joined, blank and comment-only lines dropped."""
        if self.language != "bash":
            raise ReadmeFormatError(f"README line {self.line}: only bash blocks are split into commands")
        commands: list[Command] = []
        pending, start = "", 0
        for offset, raw in enumerate(self.code.splitlines(), start=self.line + 1):
            if not pending:
                start = offset
            stripped = raw.rstrip()
            if stripped.endswith("\\"):
                pending += stripped[:-1].rstrip() + " "
                continue
            text = (pending + stripped.strip()).strip()
            pending = ""
            if text and not text.startswith("#"):
                commands.append(Command(text, start))
        if pending:
            raise ReadmeFormatError(f"README line {start}: a `\\` continuation runs past the end of the block")
        return commands

    def commands_to_run(self) -> list[Command]:
        """The commands not excused by a skip-lines marker."""
        return [c for number, c in enumerate(self.commands(), start=1) if number not in self.skipped_lines]


def _apply_marker(kind: str, body: str, line: int, found: dict) -> None:
    if kind == "example":
        if not body:
            raise ReadmeFormatError(f"README line {line}: `<!-- example: NAME -->` needs a file name")
        found["example_name"] = body
        return
    verb, _, rest = body.partition(" ")
    if verb == "skip":
        if not rest.strip():
            raise ReadmeFormatError(f"README line {line}: a walkthrough skip needs a reason after `skip`")
        found["skip_reason"] = rest.strip()
    elif verb == "skip-lines":
        numbers, _, reason = rest.strip().partition(" ")
        if not reason.strip() or not re.fullmatch(r"\d+(,\d+)*", numbers):
            raise ReadmeFormatError(f"README line {line}: write `<!-- walkthrough: skip-lines 1,2 REASON -->`")
        found.setdefault("skipped_lines", {}).update({int(n): reason.strip() for n in numbers.split(",")})
    else:
        raise ReadmeFormatError(f"README line {line}: unknown walkthrough marker {verb!r}; use skip or skip-lines")


def read_blocks(readme: Path) -> list[CodeBlock]:
    """Every ```bash and ```python block of `readme`, top to bottom, with its markers applied."""
    lines = Path(readme).read_text().splitlines()
    blocks: list[CodeBlock] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, language = opening.group(1), opening.group(2)
        end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == "```"), None)
        if end is None:
            raise ReadmeFormatError(f"README line {index + 1}: the ``` fence opened here is never closed")
        if language in RUNNABLE_LANGUAGES:
            found: dict = {}
            marker_line = index - 1
            while marker_line >= 0 and (marker := _MARKER.match(lines[marker_line])):
                _apply_marker(marker.group(1), marker.group(2), marker_line + 1, found)
                marker_line -= 1
            code = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[index + 1:end])
            block = CodeBlock(language, code + "\n", index + 1, **found)
            if block.skipped_lines:
                count = len(block.commands())
                if language != "bash" or max(block.skipped_lines) > count:
                    raise ReadmeFormatError(f"README line {index + 1}: skip-lines names a command the block lacks "
                                            f"(it has {count})")
            blocks.append(block)
        index = end + 1
    return blocks
