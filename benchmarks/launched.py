"""A benchmarked server run as a subprocess in its own session: ready once /health answers (and, behind Ray Serve,
once every replica has answered), stopped by SIGINT to the session then SIGKILL, leaving no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp

from vllm_whisper.testing.ports import free_port  # noqa: F401 (re-exported to the benchmarks)
from proc_tree import ProcessInfo, related_processes

ROOT = Path(__file__).resolve().parents[1]
REPLICA_HEADER = "x-vllm-whisper-replica"
MARKER_ENV = "VLLM_WHISPER_BENCH_LAUNCH"


class LaunchedServer:
    """A server subprocess, ready once /health answers and `replicas` distinct replicas have answered it."""

    def __init__(self, command: list[str], port: int, log: Path, replicas: int = 0, env: dict | None = None,
                 stop_timeout: float = 30.0):
        self.url = f"http://127.0.0.1:{port}"
        self.replicas = replicas
        self.stop_timeout = stop_timeout
        self.replica_ids: set[str] = set()
        self.env = dict(env or {})
        self.marker = f"{MARKER_ENV}={uuid.uuid4().hex}"  # inherited by everything it starts, Ray's daemons too
        self.log = log.open("w")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {}), MARKER_ENV: self.marker.split("=", 1)[1]})

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            self.log.flush()
            tail = "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"the server exited with {self.process.returncode}; the end of its log "
                               f"({self.log.name}):\n{tail}")

    async def wait_ready(self, timeout: float = 300.0) -> None:
        """Poll /health; with replicas > 0, keep probing (several at once) until that many replica ids answered."""
        deadline = time.perf_counter() + timeout
        async with aiohttp.ClientSession() as session:
            async def probe() -> None:
                try:
                    async with session.get(f"{self.url}/health", timeout=aiohttp.ClientTimeout(total=10)) as response:
                        if response.status == 200:
                            self.replica_ids.add(response.headers.get(REPLICA_HEADER, ""))
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass

            while time.perf_counter() < deadline:
                self._check_alive()
                await asyncio.gather(*(probe() for _ in range(max(1, 2 * self.replicas))))
                if self.replicas == 0 and self.replica_ids:
                    return
                if len(self.replica_ids - {""}) >= self.replicas > 0:
                    return
                await asyncio.sleep(0.3)
        seen = sorted(self.replica_ids - {""})
        raise RuntimeError(f"the server did not become ready in {timeout:g} s (replicas answered: {seen or 'none'} "
                           f"of {self.replicas}); see {self.log.name}, or raise the ready timeout")

    def related(self) -> list[ProcessInfo]:
        """Every live process this launch started: its session, and anything carrying its environment marker."""
        return related_processes(self.process.pid, self.marker)

    def stop(self) -> list[ProcessInfo]:
        """SIGINT to the session, SIGKILL to whatever is left after the timeout; returns the processes killed."""
        self._signal_session(signal.SIGINT)
        try:
            self.process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self._signal_session(signal.SIGKILL)
            self.process.wait(timeout=10)
        killed = self._kill_leftovers()
        self.log.close()
        return killed

    def _signal_session(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def _kill_leftovers(self, grace: float = 10.0) -> list[ProcessInfo]:
        """Ray daemons that left the session (or linger after the launcher exited): SIGKILL after a grace period."""
        deadline = time.monotonic() + grace
        while (left := self.related()) and time.monotonic() < deadline:
            time.sleep(0.5)
        for info in left:
            try:
                os.kill(info.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if left and (still := self.related()):
            time.sleep(1.0)
            still = self.related()
            if still:
                raise RuntimeError(f"processes of the launch survived SIGKILL: {[p.pid for p in still]}")
        return left
