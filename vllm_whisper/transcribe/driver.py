"""One engine driver for files, shared by the sync loop (batch.py) and the async stream (stream.py): it owns
the window jobs in flight, submits each with its window retained (a follow-up job on the window, i.e.
transcription after language detection, a fallback retry or the word alignment, skips the encoder), hands
finished outputs to their file, submits what the file asks for next, and releases a window once no next job
uses it. The two callers differ only in how a job reaches the engine (a JobSubmitter)."""

from __future__ import annotations

from typing import Protocol

from vllm_whisper.engine.request import RequestOutput
from vllm_whisper.transcribe.file_plan import FileTranscription, Piece
from vllm_whisper.transcribe.sequential import JobResult, WindowJob


class JobSubmitter(Protocol):
    """How jobs reach one engine (sync: add a request; async: start a task that consumes its outputs)."""

    def submit(self, job: WindowJob) -> None:
        """Start the job on the engine with its window retained."""
        ...

    def release_window(self, window_key: str) -> None: ...

    def abort(self, job_id: str) -> None: ...


def job_result(job: WindowJob, output: RequestOutput) -> JobResult:
    """A finished engine output as the result its file's seek loop consumes."""
    return JobResult(output.tokens, output.sum_logprob, output.no_speech_prob, job.params.temperature,
                     output.alignment)


class FileDriver:
    """The jobs of some files in flight on one engine, keyed by job id (= engine request id)."""

    def __init__(self, files: list[FileTranscription], engine: JobSubmitter):
        self.files = files
        self.engine = engine
        self.in_flight: dict[str, tuple[FileTranscription, WindowJob]] = {}

    def start(self) -> None:
        """Submit every file's first jobs."""
        for file in self.files:
            self._submit_next(file)

    def add(self, file: FileTranscription) -> None:
        """Submit a file's first jobs while others run (the streaming batch admits files as others finish)."""
        self._submit_next(file)

    def has_work(self, file: FileTranscription) -> bool:
        """Some job of the file is in flight; once advance() leaves none, the file is finished."""
        return any(f is file for f, _ in self.in_flight.values())

    def abort_file(self, file: FileTranscription) -> None:
        """Abort the file's jobs in flight and release their windows (the file failed; the others go on)."""
        for job_id, (owner, job) in list(self.in_flight.items()):
            if owner is file:
                self.engine.abort(job_id)
                self.engine.release_window(job.window_key)
                del self.in_flight[job_id]

    def complete(self, job_id: str, output: RequestOutput) -> None:
        """A job's engine request finished: feed its result to its file, then move on (record + advance)."""
        self.record(job_id, output)
        self.advance(job_id)

    def record(self, job_id: str, output: RequestOutput) -> None:
        """Feed a finished job's result to its file (CPU work, e.g. word timing: callers may run it on a worker
        thread). The job stays in flight, and its window retained, until advance()."""
        file, job = self.in_flight[job_id]
        file.on_result(job, job_result(job, output))

    def advance(self, job_id: str) -> list[WindowJob]:
        """After record(): submit the file's next jobs and release the job's window unless one of them reuses
        it; returns the submitted jobs."""
        file, job = self.in_flight.pop(job_id)
        jobs = self._submit_next(file)
        if job.window_key not in {j.window_key for j in jobs}:
            self.engine.release_window(job.window_key)
        return jobs

    def is_idle(self, file: FileTranscription, piece: Piece) -> bool:
        """No job of the piece is in flight (nor being recorded)."""
        return all(f is not file or f.piece_of(j) is not piece for f, j in self.in_flight.values())

    def abort_all(self) -> None:
        """Abort every job still in flight and release its window (on any way out: error, cancellation)."""
        for job_id, (_, job) in list(self.in_flight.items()):
            self.engine.abort(job_id)
            self.engine.release_window(job.window_key)
        self.in_flight.clear()

    def _submit_next(self, file: FileTranscription) -> list[WindowJob]:
        """The file's next jobs, asking only pieces with nothing in flight: a piece whose result another thread
        is recording is left alone."""
        jobs = file.next_jobs([piece for piece in file.pieces if not self.is_idle(file, piece)])
        for job in jobs:
            self.in_flight[job.job_id] = (file, job)
            self.engine.submit(job)
        return jobs
