"""One INFO line per finished request on the `vllm_whisper.requests` logger: uploads (transcriptions, translations)
and realtime turns. The line carries ids, outcome and timings only, never audio, text, prompts or keys:

    Finished request trsc-3f9c...: model=tiny.en task=transcribe status=ok audio_s=3.12 latency_s=0.841
    rtfx=3.71 streamed=false

status is `ok`, the HTTP status of an error answer (`400`, `404`, `429`, `503`, ...), `aborted` (the client left) or
`error` (a stream or realtime turn that ended with an error event). rtfx is audio seconds per wall-clock second.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

REQUEST_LOGGER = logging.getLogger("vllm_whisper.requests")
STATUS_OF_REASON = {"stop": "ok", "length": "ok", "abort": "aborted", "error": "error"}


def new_request_id(prefix: str) -> str:
    """A request id unique across restarts and replicas, as vLLM makes them (`trsc-` + random hex; a stream's
    chunks carry the same kind of id)."""
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class RequestRecord:
    """One request's timings as it runs (also its timer: time to first text, elapsed) and, once finished, its line."""

    request_id: str
    model: str
    task: str  # transcribe | translate | realtime
    arrival: float = field(default_factory=time.monotonic)
    audio_seconds: float | None = None  # known once the audio is decoded
    streamed: bool = False
    first_token: float | None = None  # seconds from arrival to the first text
    finished: bool = False

    def first_text(self) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic() - self.arrival

    def elapsed(self) -> float:
        return time.monotonic() - self.arrival

    def finish(self, status: str) -> None:
        """Log the request's line; later calls (an error after the answer was logged) do nothing."""
        if self.finished:
            return
        self.finished = True
        REQUEST_LOGGER.info("%s", self.line(status, self.elapsed()))

    def line(self, status: str, latency: float) -> str:
        audio = "-" if self.audio_seconds is None else f"{self.audio_seconds:.2f}"
        speed = f"{self.audio_seconds / latency:.2f}" if self.audio_seconds and latency > 0 else "-"
        return (f"Finished request {self.request_id}: model={self.model} task={self.task} status={status} "
                f"audio_s={audio} latency_s={latency:.3f} rtfx={speed} streamed={str(self.streamed).lower()}")


@contextmanager
def logged(record: RequestRecord) -> Iterator[RequestRecord]:
    """Log the record's line when the block ends: ok, aborted (cancelled) or error (it raised)."""
    try:
        yield record
    except asyncio.CancelledError:
        record.finish("aborted")
        raise
    except Exception:
        record.finish("error")
        raise
    record.finish("ok")
