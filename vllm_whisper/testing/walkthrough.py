"""Run the README's commands top to bottom in a fresh clone: bash lines one by one, python blocks as scripts,
server commands in the background for the client commands right after them (the server is stopped with SIGTERM
before the first later command that is not its client), and fail on the first command that does not exit 0 or
prints nothing where it should print.

What is substituted, and why (the commands' meaning is never changed):
  127.0.0.1:8000, localhost:8000  -> the port of the server started last (a free loopback port, so parallel
                                     test runs never collide)
  --port 8000 on a server command -> --port FREE (added when the command has no --port)
  /srv/whisper (--models-dir)     -> a folder holding the bundled `base` model's directory as `base`
  curl                            -> curl --fail-with-body (an HTTP error answer is a failing exit code, not a
                                     printed error body that looks like success)
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from vllm_whisper.testing.readme_blocks import CodeBlock
from vllm_whisper.testing.walkthrough_clone import Clone
from vllm_whisper.testing.walkthrough_server import (
    BackgroundServer,
    WalkthroughError,
    is_server_command,
    without_comment,
)

COMMAND_TIMEOUT_S = 240.0
LOCAL_ADDRESS = re.compile(r"\b(127\.0\.0\.1|localhost):8000\b")
MODELS_DIR_PLACEHOLDER = "/srv/whisper"


@dataclass(frozen=True)
class Step:
    """One README command that ran, and how long it took."""

    line: int
    command: str
    seconds: float


@dataclass
class Walkthrough:
    """The state of one walkthrough: the clone, the running server (if any) and what has run so far."""

    clone: Clone
    models_dir: Path
    logs: Path
    server: BackgroundServer | None = None
    steps: list[Step] = field(default_factory=list)
    unused_examples: dict[str, int] = field(default_factory=dict)  # file name -> README line

    def run_all(self, blocks: list[CodeBlock]) -> list[Step]:
        """Every block not excused, in order; the last server is stopped at the end (also on a failure)."""
        try:
            for block in blocks:
                self._run_block(block)
            self._stop_server()
        finally:
            if self.server is not None:
                self.server.kill()
        if self.unused_examples:
            raise WalkthroughError(f"example files no README command runs: {self.unused_examples}")
        return self.steps

    def _run_block(self, block: CodeBlock) -> None:
        if block.skip_reason is not None:
            return
        if block.example_name is not None:
            (self.clone.path / block.example_name).write_text(self._substitute(block.code, block.line))
            self.unused_examples[block.example_name] = block.line
        elif block.language == "python":
            script = self.clone.path / f"readme_line{block.line}.py"
            script.write_text(self._substitute(block.code, block.line))
            self._run(f"python {script.name}", block.line, shown=f"```python block at line {block.line}",
                      client=LOCAL_ADDRESS.search(block.code) is not None)
        else:
            for command in block.commands_to_run():
                self._run(command.text, command.line, client=LOCAL_ADDRESS.search(command.text) is not None)

    def _substitute(self, text: str, line: int) -> str:
        text = text.replace(MODELS_DIR_PLACEHOLDER, str(self.models_dir))
        text = re.sub(r"^curl ", "curl --fail-with-body ", text)
        if LOCAL_ADDRESS.search(text):
            if self.server is None:
                raise WalkthroughError(f"README line {line}: a client of 127.0.0.1:8000 with no server started above")
            text = LOCAL_ADDRESS.sub(f"127.0.0.1:{self.server.port}", text)
        return text

    def _run(self, command: str, line: int, shown: str | None = None, client: bool = False) -> None:
        """Run one command; `client`: it talks to the server started last, which otherwise is stopped first."""
        for name in list(self.unused_examples):
            if re.search(rf"(^|\s){re.escape(name)}(\s|$)", command):
                del self.unused_examples[name]
        started = time.monotonic()
        if is_server_command(command):
            self._stop_server()
            command = self._substitute(without_comment(command), line)
            log = self.logs / f"server_line{line}.log"
            self.server = BackgroundServer.start(command, line, self.clone.path, self.clone.env, log)
        else:
            if not client:
                self._stop_server()  # the server's clients are the commands right after it
            self._run_client(self._substitute(command, line), line, shown)
        self.steps.append(Step(line, shown or command, time.monotonic() - started))

    def _run_client(self, command: str, line: int, shown: str | None) -> None:
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command], cwd=self.clone.path,
                              env=self.clone.env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        if done.returncode != 0:
            problem = f"exited with {done.returncode}"
        else:
            problem = _missing_output(command, done.stdout, self.clone.path)
        if problem is not None:
            raise WalkthroughError(f"README line {line}: `{shown or command}` {problem}\n--- stdout tail ---\n"
                                   f"{done.stdout[-2000:]}\n--- stderr tail ---\n{done.stderr[-3000:]}")

    def _stop_server(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            started = time.monotonic()
            server.stop()
            self.steps.append(Step(server.line, f"(SIGTERM to the server of line {server.line})",
                                   time.monotonic() - started))


def _missing_output(command: str, stdout: str, cwd: Path) -> str | None:
    """Why the command's output is missing: stdout, or the file / folder it writes to, is empty."""
    command = without_comment(command)  # "speech -> text" in a comment is no redirect
    redirect = re.search(r"(?<![0-9&])>\s*(\S+)", command)
    output_dir = re.search(r"--output-dir[ =](\S+)", command)
    if redirect:
        target = cwd / redirect.group(1)
        return None if target.is_file() and target.stat().st_size > 0 else f"left {target.name} empty or missing"
    if output_dir:
        folder = cwd / output_dir.group(1)
        written = [p for p in folder.iterdir() if p.is_file() and p.stat().st_size > 0] if folder.is_dir() else []
        return None if written else f"wrote no non-empty file under {output_dir.group(1)}"
    return None if stdout.strip() else "printed nothing"
