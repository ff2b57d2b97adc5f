"""One input file as one or more pieces, each with its own seek loop, merged back onto the file's timeline.

- sequential (default): one piece, the whole file (or, with vad_filter, its speech laid end to end, with times
  mapped back through the VAD time map).
- parallel: the file cut at quiet points (or between VAD speech spans) into pieces of at most 30 s, all
  decoded at once; each piece's times are shifted by its offset. No text conditioning crosses a cut.

When a multilingual model must detect the language, the first piece detects it and the others wait for it, so
the whole file is transcribed in one language.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from vllm_whisper.audio.chunking import plan_chunks
from vllm_whisper.audio.decode import SAMPLE_RATE
from vllm_whisper.audio.vad import collect_speech, detect_speech
from vllm_whisper.model_executor.loader import LoadedModel
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.transcribe.result import Segment, TranscriptionResult
from vllm_whisper.transcribe.sequential import JobResult, LongFormTranscription, WindowJob
from vllm_whisper.transcribe.token_budget import TokenBudget

TimeMapper = Callable[[float, bool], float]  # (seconds in the piece, is_end) -> seconds in the file


@dataclass
class Piece:
    machine: LongFormTranscription
    to_file_time: TimeMapper


class FileTranscription:
    """The pieces of one file and their merge; drivers ask for jobs and hand back results."""

    def __init__(self, loaded: LoadedModel, audio: np.ndarray, params: TranscriptionParams, name: str):
        self.loaded, self.params, self.name = loaded, params, name
        self.duration = len(audio) / SAMPLE_RATE
        budget = TokenBudget(params.max_completion_tokens)  # max_completion_tokens counts across all pieces
        spans = None
        if params.vad_filter:
            spans = detect_speech(audio, threshold=params.vad_threshold, min_silence_ms=params.vad_min_silence_ms)
        if params.chunking_strategy == "parallel" and (spans is None or spans):
            chunks = plan_chunks(audio, 30.0, spans)
            self.pieces = [Piece(LongFormTranscription(loaded, audio[c.start:c.end], params, f"{name}/{i}", budget),
                                 _shift(c.start / SAMPLE_RATE)) for i, c in enumerate(chunks)]
        elif spans is not None:
            speech, time_map = collect_speech(audio, spans)
            self.pieces = [Piece(LongFormTranscription(loaded, speech, params, f"{name}/0", budget), time_map.to_original)]
        else:
            self.pieces = [Piece(LongFormTranscription(loaded, audio, params, f"{name}/0", budget), _shift(0.0))]
        self._owner = {piece.machine.name: piece for piece in self.pieces}
        self._streamed_segments = 0

    def next_segment_id(self) -> int:
        """Numbers segments sent while streaming, in file order (they match result()'s ids)."""
        self._streamed_segments += 1
        return self._streamed_segments - 1

    # --- driving ----------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return all(piece.machine.done for piece in self.pieces)

    def language_known(self) -> bool:
        return self.pieces[0].machine.language is not None

    def ready_pieces(self) -> list[Piece]:
        """Pieces that may issue a job now (the others wait for the first piece's language)."""
        return self.pieces if self.language_known() else self.pieces[:1]

    def next_jobs(self, busy: Sequence[Piece] = ()) -> list[WindowJob]:
        """The next job of every ready piece but the busy ones (whose results are still being recorded)."""
        jobs = [piece.machine.next_job() for piece in self.ready_pieces() if all(piece is not b for b in busy)]
        return [job for job in jobs if job is not None]

    def piece_of(self, job: WindowJob) -> Piece:
        return self._owner[job.job_id.rsplit(":", 1)[0]]

    def on_result(self, job: WindowJob, result: JobResult) -> None:
        self.piece_of(job).machine.on_result(job, result)
        first = self.pieces[0].machine
        if job.kind == "language" and self.piece_of(job) is self.pieces[0]:
            for piece in self.pieces[1:]:
                piece.machine.language = first.language

    # --- merging ----------------------------------------------------------------------------------
    def map_segment(self, piece: Piece, segment: Segment, segment_id: int) -> Segment:
        """A piece's segment on the file's timeline (words included)."""
        to_file = piece.to_file_time
        words = None
        if segment.words is not None:
            words = [replace(w, start=round(to_file(w.start, False), 3), end=round(to_file(w.end, True), 3))
                     for w in segment.words]
        start = round(to_file(segment.start, False), 3)
        seek_offset = round(to_file(segment.seek / 100, False) * 100)
        return replace(segment, id=segment_id, seek=seek_offset, start=start,
                       end=round(max(start, to_file(segment.end, True)), 3), words=words)

    def result(self) -> TranscriptionResult:
        segments = []
        for piece in self.pieces:
            for segment in piece.machine.result().segments:
                segments.append(self.map_segment(piece, segment, len(segments)))
        first = self.pieces[0].machine
        text = "".join(s.text for s in segments).strip()
        return TranscriptionResult(text, first.language or "en", round(self.duration, 3), segments,
                                   first.language_probability)


def _shift(offset: float) -> TimeMapper:
    return lambda seconds, is_end=False: seconds + offset
