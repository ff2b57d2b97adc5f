"""Sequential long-form transcription as a state machine: decode a 30 s window, move the seek to its last
timestamp, repeat.

The machine only says which window to decode next (a WindowJob) and consumes the result, so the same loop runs
on the reference decoder (one job at a time: decoding/reference_runner.py, the oracle) and on the batched engine
(jobs of many files at once). It keeps
the reference semantics: temperature fallback on repetitive or unlikely output (a retry is another job on the
same window, so the encoder output is reused), conditioning on previous text, an initial prompt, and skipping
windows judged silent.
Features are computed once per file (audio padded with 30 s of silence, as the reference does) and sliced per
window, so a file's first window equals the single-window features exactly. Language detection is a one-token
job on the first window, whose encoder output the transcription job then reuses. With word timestamps, a
window's segments wait for an alignment job on the same window (the engine reads the alignment heads'
cross-attention from its slot) before the seek moves on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from vllm_whisper.audio.decode import SAMPLE_RATE
from vllm_whisper.audio.features import HOP_LENGTH, N_FRAMES, N_SAMPLES, log_mel_spectrogram
from vllm_whisper.engine.alignment import AlignmentOutput, AlignmentParams
from vllm_whisper.engine.sampler import SamplingParams
from vllm_whisper.model_executor.loader import LoadedModel
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.sampling.rules import LogitsRules
from vllm_whisper.transcribe.alignment import apply_word_timings, tokens_per_segment, word_timings
from vllm_whisper.transcribe.result import Segment, TranscriptionResult, compression_ratio
from vllm_whisper.transcribe.segments import split_window
from vllm_whisper.transcribe.token_budget import TokenBudget


DEFAULT_SAMPLING_SEED = 0  # temperature sampling is reproducible unless the request brings its own seed
SEED_MODULUS = 2**64  # torch generators take seeds in [0, 2**64); request seeds may be negative (as in vLLM)

@dataclass
class WindowJob:
    """One decode of one window, to run on the engine or the reference decoder."""

    job_id: str
    window_key: str  # jobs of the same window share one encoder run
    features: torch.Tensor  # (n_mels, 3000)
    prompt: list[int]
    params: SamplingParams  # an "align" job carries its window's transcription params (not sampled)
    kind: str  # "language", "transcribe" or "align"
    audio_seconds: float
    forced_prefix: list[int] = field(default_factory=list)  # prompt tokens that belong to the transcript
    alignment: AlignmentParams | None = None  # an "align" job's text to time (its prompt has no timestamps)
    full_audio_context: bool = False  # the window's words will be aligned: encode all of it (engine/audio_context.py)


@dataclass
class JobResult:
    tokens: list[int]
    sum_logprob: float
    no_speech_prob: float
    temperature: float = 0.0
    alignment: AlignmentOutput | None = None  # an "align" job's output

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / (len(self.tokens) + 1)


def build_rules(loaded: LoadedModel, params: TranscriptionParams) -> LogitsRules:
    tok = loaded.tokenizer
    suppress = params.suppress_tokens if params.suppress_tokens is not None else loaded.generation.suppress_tokens
    return LogitsRules(
        eot=tok.eot,
        no_timestamps=tok.no_timestamps,
        timestamp_begin=tok.timestamp_begin,
        suppress_tokens=tuple(suppress),
        begin_suppress_tokens=loaded.generation.begin_suppress_tokens,
        timestamps=params.timestamps,
        suppress_blank=params.suppress_blank,
        max_initial_timestamp_index=round(params.max_initial_timestamp / 0.02),
    )


def language_rules(loaded: LoadedModel) -> LogitsRules:
    """Rules that leave only the language tokens: one greedy step after <|startoftranscript|> picks the language
    and its log-probability is the language's probability among all languages."""
    tok = loaded.tokenizer
    languages = set(tok.language_to_id.values())
    others = tuple(i for i in range(loaded.config.vocab_size) if i not in languages)
    return LogitsRules(tok.eot, tok.no_timestamps, tok.timestamp_begin, others, (), timestamps=False,
                       suppress_blank=False)


@dataclass
class _UnalignedWindow:
    """A decoded window whose segments wait for their word timings (the alignment job in flight)."""

    job: WindowJob  # the transcription job that decoded it
    result: JobResult
    segments: list[Segment]
    tokens: list[list[int]]  # each segment's text tokens
    consumed: int  # frames to advance without word timestamps


class LongFormTranscription:
    """The seek loop of one audio file."""

    def __init__(self, loaded: LoadedModel, audio: np.ndarray, params: TranscriptionParams, name: str,
                 budget: TokenBudget | None = None):
        """`budget` is the input's max_completion_tokens allowance, shared when the input is cut into pieces."""
        tok = loaded.tokenizer
        if params.task == "translate" and not tok.is_multilingual:
            raise ValueError(f"The English-only model {loaded.name!r} cannot translate; use a multilingual model.")
        self.loaded, self.params, self.name = loaded, params, name
        self._mel: torch.Tensor | None = None
        self.audio = audio
        self.content_frames = len(audio) // HOP_LENGTH
        self.duration = len(audio) / SAMPLE_RATE
        self.rules = build_rules(loaded, params)
        self.language = params.language if tok.is_multilingual else "en"
        self.language_probability: float | None = None
        self.segments: list[Segment] = []
        self.seek = 0
        self.skipped_windows = 0
        self.fallbacks = 0
        self._jobs_issued = 0
        self._in_flight: WindowJob | None = None
        self._unaligned: _UnalignedWindow | None = None
        self._alignments_issued = 0  # own count: alignment jobs leave the sampling seeds as they were
        self._temperature_index = 0  # position in params.temperature for the current window
        self._all_tokens: list[int] = tok.encode(" " + params.initial_prompt.strip()) if params.initial_prompt else []
        self._prompt_reset_since = 0
        self._prefix_tokens: list[int] = tok.encode(" " + params.prefix.strip()) if params.prefix else []
        hotwords = (params.hotwords or "").strip()
        self._hotword_tokens: list[int] = tok.encode(" " + hotwords) if hotwords else []
        self.budget = budget if budget is not None else TokenBudget(params.max_completion_tokens)
        self._window_grant: int | None = None  # tokens of the budget this window holds (kept across its retries)
        self._last_speech_timestamp = 0.0
        self._failed_attempts: list[tuple[JobResult, float]] = []  # this window's decodes that needed a fallback

    @property
    def mel(self) -> torch.Tensor:
        """The file's log-mel, padded with 30 s of silence; computed when the first window is decoded, so a file
        whose windows are all silent (skipped) never pays for it."""
        if self._mel is None:
            self._mel = log_mel_spectrogram(self.audio, self.loaded.config.num_mel_bins, padding=N_SAMPLES)
        return self._mel

    @property
    def done(self) -> bool:
        return self._in_flight is None and self.seek >= self.content_frames

    def next_job(self) -> WindowJob | None:
        """The next window decode, or None when the file is finished (or a job is already out)."""
        if self._in_flight is not None:
            return None
        if self._unaligned is not None:
            self._in_flight = self._alignment_job(self._unaligned)
            return self._in_flight
        while self.seek < self.content_frames and self._window_is_silent():
            self.seek += min(N_FRAMES, self.content_frames - self.seek)
            self.skipped_windows += 1
        if self.seek >= self.content_frames:
            return None
        if self.language is not None and not self._reserve_window():
            return None  # the input's max_completion_tokens are spent, or held by its other pieces for now
        model = self.loaded.model
        window_frames = min(N_FRAMES, self.content_frames - self.seek)
        features = self.mel[:, self.seek:self.seek + N_FRAMES].contiguous()
        key = f"{self.name}@{self.seek}"
        if self.language is None:
            params = SamplingParams(language_rules(self.loaded), max_new_tokens=1)
            job = WindowJob(self._job_id("lang"), key, features, [self.loaded.tokenizer.sot], params, "language",
                            window_frames / 100, full_audio_context=self.params.word_timestamps)
        else:
            forced = self._prefix_tokens if self.seek == 0 else []
            previous = self._all_tokens[self._prompt_reset_since:]
            hotwords = [] if forced else self._hotword_tokens  # faster-whisper drops hotwords when a prefix is set
            prompt = model.get_decoder_prompt(self.language, self.params.task, self.params.timestamps, previous,
                                              hotwords)
            params = self._sampling_params(prompt)
            if forced:  # the transcript continues after the prefix, which may be complete: allow end-of-text
                params = replace(params, rules=replace(self.rules, suppress_blank=False))
            job = WindowJob(self._job_id("win"), key, features, prompt + forced, params, "transcribe",
                            window_frames / 100, forced, full_audio_context=self.params.word_timestamps)
        self._in_flight = job
        return job

    def _sampling_params(self, prompt: list[int]) -> SamplingParams:
        """How the current window's attempt samples, within the tokens the window holds of the budget."""
        p = self.params
        temperature = p.temperature[self._temperature_index]
        # Seeded per job even without a request seed, so a window that falls back to sampling gives the same
        # text on every run, alone or in any batch (each request samples from its own generator).
        base = DEFAULT_SAMPLING_SEED if p.seed is None else p.seed
        return SamplingParams(
            self.rules, max_new_tokens=self._window_grant, temperature=temperature,
            top_k=p.top_k, top_p=p.top_p, min_p=p.min_p, repetition_penalty=p.repetition_penalty,
            frequency_penalty=p.frequency_penalty, presence_penalty=p.presence_penalty,
            seed=(base + self._jobs_issued) % SEED_MODULUS, beam_size=p.beam_size if temperature == 0 else 1,
            patience=p.patience, length_penalty=p.length_penalty,
            no_speech_index=prompt.index(self.loaded.tokenizer.sot),
        )

    def _reserve_window(self) -> bool:
        """Hold the current window's share of max_completion_tokens; False when none is left now (the input is
        finished once no other piece holds a share that could come back)."""
        if self._window_grant is not None:  # a fallback retry decodes within the same share
            return True
        granted = self.budget.reserve(self.params.max_new_tokens)
        if granted == 0:
            if self.budget.spent_for_good:
                self.seek = self.content_frames
            return False
        self._window_grant = granted
        return True

    def _settle_window(self, used: int) -> None:
        if self._window_grant is not None:
            self.budget.settle(self._window_grant, used)
            self._window_grant = None

    def on_result(self, job: WindowJob, result: JobResult) -> None:
        if job is not self._in_flight:
            raise RuntimeError(f"unexpected result for job {job.job_id}")
        self._in_flight = None
        tok = self.loaded.tokenizer
        if job.kind == "align":
            unaligned, self._unaligned = self._unaligned, None
            self._commit(unaligned.segments, unaligned.result, self._apply_words(unaligned, result.alignment))
            return
        if job.kind == "language":
            self.language = tok.id_to_language[result.tokens[0]]
            self.language_probability = math.exp(result.sum_logprob)
            return
        if job.forced_prefix:
            result = replace(result, tokens=job.forced_prefix + result.tokens)
        window_frames = min(N_FRAMES, self.content_frames - self.seek)
        text = tok.decode(result.tokens)
        window_ratio = compression_ratio(text)
        if self._needs_fallback(result, window_ratio):
            self._failed_attempts.append((result, window_ratio))
            if self._temperature_index + 1 < len(self.params.temperature):
                self._temperature_index += 1  # retry this window hotter; the job reuses its encoder output
                self.fallbacks += 1
                return
            result, window_ratio = self._best_attempt()
        self._temperature_index = 0
        self._failed_attempts = []
        self._settle_window(len(result.tokens) - len(job.forced_prefix))
        if self._is_silence(result):
            self.seek += window_frames
            self.skipped_windows += 1
            return
        spans, consumed = split_window(result.tokens, tok, self.seek, window_frames)
        segments = self._make_segments(spans, result, window_ratio)
        if self.params.word_timestamps and segments:
            unaligned = _UnalignedWindow(job, result, segments, tokens_per_segment(segments, tok.eot), consumed)
            if any(unaligned.tokens):
                self._unaligned = unaligned  # the next job times its words
                return
            consumed = self._apply_words(unaligned, None)
        self._commit(segments, result, consumed)

    def _commit(self, segments: list[Segment], result: JobResult, consumed: int) -> None:
        """Keep a finished window's segments as context and move the seek past it."""
        for segment in segments:
            self.segments.append(segment)
            self._all_tokens += segment.tokens
        if not self.params.condition_on_previous_text or result.temperature > 0.5:
            self._prompt_reset_since = len(self._all_tokens)
        self.seek += consumed

    def _alignment_job(self, unaligned: _UnalignedWindow) -> WindowJob:
        """The alignment pass over the window just decoded: its text after a timestamp-free prompt."""
        job = unaligned.job
        window_frames = min(N_FRAMES, self.content_frames - self.seek)
        prompt = self.loaded.tokenizer.sot_sequence(self.language, self.params.task, timestamps=False)
        text = tuple(t for tokens in unaligned.tokens for t in tokens)
        self._alignments_issued += 1
        return WindowJob(f"{self.name}:align{self._alignments_issued}", job.window_key, job.features, prompt,
                         job.params, "align", job.audio_seconds, alignment=AlignmentParams(text, window_frames))

    def _apply_words(self, unaligned: _UnalignedWindow, aligned: AlignmentOutput | None) -> int:
        """Time every word of the window from its alignment output and, as the reference does, start the next
        window at the last word's end unless the window ended on a lone timestamp; returns the frames to advance."""
        tok = self.loaded.tokenizer
        text = [t for tokens in unaligned.tokens for t in tokens]
        timings = word_timings(tok, text, aligned, self.language) if aligned is not None else []
        self._last_speech_timestamp = apply_word_timings(unaligned.segments, unaligned.tokens, timings, self.params,
                                                         self._last_speech_timestamp)
        tokens = unaligned.result.tokens
        single_timestamp_ending = len(tokens) >= 2 and not tok.is_timestamp(tokens[-2]) and tok.is_timestamp(tokens[-1])
        ends = [w.end for s in unaligned.segments for w in s.words or []]
        window_start = self.seek / 100
        if not single_timestamp_ending and ends and ends[-1] > window_start:
            return max(1, round(ends[-1] * 100) - self.seek)
        return unaligned.consumed

    def preview_segments(self, partial_tokens: list[int]) -> list[Segment]:
        """Segments already closed by a timestamp pair in the partial output of the window in flight: what
        on_result will keep for them unless a fallback retry replaces the window (streaming sends them early).
        With word timestamps there are none: word alignment moves the times once the window is done."""
        if (self._in_flight is None or self._in_flight.kind != "transcribe" or not self.params.timestamps
                or self.params.word_timestamps):
            return []
        tok = self.loaded.tokenizer
        closed = [i + 1 for i in range(len(partial_tokens) - 1)
                  if tok.is_timestamp(partial_tokens[i]) and tok.is_timestamp(partial_tokens[i + 1])]
        if not closed:
            return []
        window_frames = min(N_FRAMES, self.content_frames - self.seek)
        spans, _ = split_window(partial_tokens[:closed[-1] + 1], tok, self.seek, window_frames)
        return self._make_segments(spans, JobResult(partial_tokens, 0.0, math.nan), 0.0)

    def _make_segments(self, spans, result: JobResult, window_ratio: float) -> list[Segment]:
        """Number the window's spans as segments, dropping empty ones (and zero-length ones with timestamps)."""
        tok = self.loaded.tokenizer
        segments: list[Segment] = []
        for span in spans:
            text = tok.decode(span.tokens)
            if not text.strip() or (self.params.timestamps and span.end <= span.start):
                continue
            segments.append(Segment(
                id=len(self.segments) + len(segments), seek=self.seek, start=round(span.start, 3),
                end=round(min(span.end, self.duration), 3), text=text, tokens=span.tokens,
                temperature=result.temperature, avg_logprob=result.avg_logprob, compression_ratio=window_ratio,
                no_speech_prob=result.no_speech_prob,
            ))
        return segments

    def _window_is_silent(self) -> bool:
        threshold = self.params.silence_threshold_db
        if threshold is None:
            return False
        start = self.seek * HOP_LENGTH
        samples = self.audio[start:start + N_SAMPLES]
        peak = float(np.abs(samples).max()) if samples.size else 0.0
        return peak < 10 ** (threshold / 20)

    def _needs_fallback(self, result: JobResult, ratio: float) -> bool:
        p = self.params
        needs = (p.compression_ratio_threshold is not None and ratio > p.compression_ratio_threshold) or (
            p.logprob_threshold is not None and result.avg_logprob < p.logprob_threshold)
        if (p.no_speech_threshold is not None and result.no_speech_prob > p.no_speech_threshold
                and p.logprob_threshold is not None and result.avg_logprob < p.logprob_threshold):
            needs = False  # silence: no temperature will find speech here
        return needs

    def _best_attempt(self) -> tuple[JobResult, float]:
        """Every temperature failed the checks: keep the most likely attempt that is not repetitive (as
        faster-whisper does; the reference keeps the last, hottest one, which is usually the worst)."""
        threshold = self.params.compression_ratio_threshold
        candidates = [a for a in self._failed_attempts if threshold is None or a[1] <= threshold]
        return max(candidates or self._failed_attempts, key=lambda attempt: attempt[0].avg_logprob)

    def _is_silence(self, result: JobResult) -> bool:
        p = self.params
        if p.no_speech_threshold is None or not result.no_speech_prob > p.no_speech_threshold:
            return False
        return not (p.logprob_threshold is not None and result.avg_logprob > p.logprob_threshold)

    def result(self) -> TranscriptionResult:
        if not self.done:
            raise RuntimeError(f"{self.name} is not finished")
        text = "".join(s.text for s in self.segments).strip()
        return TranscriptionResult(text, self.language or "en", round(self.duration, 3), self.segments,
                                   self.language_probability)

    def _job_id(self, kind: str) -> str:
        self._jobs_issued += 1
        return f"{self.name}:{kind}{self._jobs_issued}"
