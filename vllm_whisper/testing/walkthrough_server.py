"""A README server command run in the background for the walkthrough: started on a free loopback port, ready once
/health answers 200, stopped with SIGTERM and expected to exit 0 within the drain timeout."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from vllm_whisper.testing.ports import free_port

SERVER_COMMAND = re.compile(r"^(vllm-whisper serve\b|python -m vllm_whisper\.entrypoints\.api_server\b|"
                            r"bash scripts/serve\.sh\b)")
STARTUP_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 45.0  # the server's --shutdown-timeout (30 s) plus start-up slack


class WalkthroughError(AssertionError):
    """A README command failed: the message names the command, its README line and its output's tail."""


def is_server_command(command: str) -> bool:
    return SERVER_COMMAND.match(command) is not None


def without_comment(command: str) -> str:
    """A README command line without its trailing `  # ...` comment (the README's commands quote no '#')."""
    return re.sub(r"\s+#.*$", "", command)


def on_port(command: str, port: int) -> str:
    """The server command listening on `port`: its `--port` replaced, or added when it has none."""
    command = without_comment(command)
    if re.search(r"--port[ =]\d+", command):
        return re.sub(r"--port[ =]\d+", f"--port {port}", command)
    return f"{command} --port {port}"


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:]


@dataclass
class BackgroundServer:
    """One README server command, running."""

    command: str
    line: int
    port: int
    process: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, command: str, line: int, cwd: Path, env: dict[str, str], log: Path) -> "BackgroundServer":
        port = free_port()
        shell = f"exec {on_port(command, port)}"  # exec: SIGTERM reaches the server itself
        with open(log, "w") as out:
            process = subprocess.Popen(["bash", "-c", shell], cwd=cwd, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        server = cls(shell, line, port, process, log)
        server._wait_ready()
        return server

    def fail(self, what: str) -> WalkthroughError:
        return WalkthroughError(f"README line {self.line}: `{self.command}` {what}\n--- server log tail ---\n"
                                f"{tail(self.log)}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self.fail(f"exited with {self.process.returncode} before /health answered")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise self.fail(f"did not answer /health within {STARTUP_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """SIGTERM, then expect exit 0 within the drain timeout."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=DRAIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self.fail(f"did not exit within {DRAIN_TIMEOUT_S:.0f} s of SIGTERM") from None
        if code != 0:
            raise self.fail(f"exited with {code} after SIGTERM (expected 0)")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
