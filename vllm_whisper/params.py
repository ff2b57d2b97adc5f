"""TranscriptionParams: the one options object that the CLI, the offline API and the server fill in."""

from __future__ import annotations

from dataclasses import dataclass

from vllm_whisper.languages import normalize_language

TASKS = ("transcribe", "translate")
CHUNKING_STRATEGIES = ("sequential", "parallel")
TEMPERATURE_STEP = 0.2
SEED_RANGE = (-(2**63), 2**63 - 1)  # torch.long, as vLLM bounds `seed`
PENALTY_RANGE = (-2.0, 2.0)  # frequency / presence penalties, as vLLM and OpenAI bound them


def fallback_temperatures(start: float = 0.0) -> tuple[float, ...]:
    """The fallback schedule from `start` up to 1.0 in steps of 0.2 (OpenAI's `temperature`: 0 means greedy,
    then hotter retries); (start,) when start is above 1."""
    steps = int((1.0 - start) / TEMPERATURE_STEP + 1e-6) + 1 if start <= 1.0 else 1
    return tuple(round(start + TEMPERATURE_STEP * i, 2) for i in range(steps))


@dataclass(frozen=True)
class TranscriptionParams:
    """How to transcribe one audio input.

    task: "transcribe" keeps the spoken language; "translate" outputs English (multilingual models only).
    language: ISO code or name of the spoken language; None detects it from the first window.
    timestamps: decode Whisper's timestamp tokens, giving one segment per sentence-like span; False gives one
        segment per 30 s window and decodes slightly faster.
    max_new_tokens: most tokens sampled per 30 s window (the reference uses 224 = half the decoder context).
    suppress_tokens: token ids never sampled; None uses the checkpoint's list (non-speech symbols, controls).
    suppress_blank: forbid a blank or end-of-text as the first sampled token of a window.
    max_initial_timestamp: latest allowed first timestamp of a window, in seconds.
    temperature: the fallback schedule: decode at the first temperature; when the result is too repetitive
        (compression ratio above compression_ratio_threshold) or too unlikely (average log-probability below
        logprob_threshold), retry the window at the next one. Retries reuse the window's encoder output. When every
        temperature fails, the most likely attempt that is not repetitive is kept.
    compression_ratio_threshold / logprob_threshold: the fallback triggers (None disables each).
    no_speech_threshold: a window whose no-speech probability exceeds this while its average log-probability is
        below logprob_threshold is treated as silence and skipped.
    silence_threshold_db: a window whose peak level stays below this many dBFS is skipped without decoding
        (Whisper tends to invent a word or two for digital silence); None decodes every window.
    condition_on_previous_text: give each window the previous windows' text as a prompt (reset after a window
        decoded at temperature > 0.5, which stops runaway repetition).
    initial_prompt: text that conditions the first window (spellings, names, style).
    prefix: text the first window's transcript is forced to start with (the decoder continues after it); live
        transcription passes the words already sent, so later passes only extend them. Needs timestamps=False.
    seed: the base of the sampling seeds (each window's fallback sampling draws from its own generator); the default
        None uses a fixed base, so the same input gives the same text on every run, alone or in any batch.
    top_k / top_p / min_p: when a window samples (temperature > 0): keep only the k most likely tokens (0: all), the
        smallest set whose probability reaches top_p, and tokens at least min_p times as likely as the best one.
    repetition_penalty / frequency_penalty / presence_penalty: vLLM's (and OpenAI's) penalties, in greedy decoding
        and beam search too. A text token already seen has its logit divided by repetition_penalty when positive
        and multiplied by it when negative ("seen": in the window's prompt, i.e. previous text, initial prompt and
        hotwords, or in its output so far); frequency_penalty * count and presence_penalty (once) are subtracted
        for each text token the window has output. Special and timestamp tokens are never counted nor penalised,
        so Whisper's timestamp rules keep their meaning. The defaults (1, 0, 0) leave decoding untouched.
    max_completion_tokens: the most tokens decoded for the whole input across all its windows (each window also
        stops at max_new_tokens); None: no limit. A window that falls back is retried within the same allowance.
    hotwords: words or phrases to favour, put into every window's previous-text prompt ahead of the previous text
        (as faster-whisper does; not on the first window when a prefix is forced).
    beam_size: 1 decodes greedily; more runs beam search with that many beams (openai-whisper's CLI uses 5).
    patience: beam search ends once round(beam_size * patience) hypotheses have finished.
    length_penalty: None ranks hypotheses by log-probability / length; alpha in [0, 1] uses ((5 + L) / 6) ** alpha.
    word_timestamps: time every word from the cross-attention of the model's alignment heads (DTW); fills
        Segment.words and, like the reference, uses the last word's end to place the next window.
    prepend_punctuations / append_punctuations: punctuation merged into the following / preceding word.
    chunking_strategy: "sequential" (default) seeks window by window with the reference semantics (each
        window conditioned on the previous text, exact segment boundaries); "parallel" cuts the file at quiet
        points (or VAD gaps) into pieces of at most 30 s and decodes them all at once: lower latency for one
        long file, no conditioning across pieces.
    vad_filter: drop non-speech with the silero-vad model before decoding (timestamps stay in the original
        file's time); vad_threshold is its speech probability threshold, vad_min_silence_ms the shortest gap
        that splits speech.
    """

    task: str = "transcribe"
    language: str | None = None
    timestamps: bool = True
    max_new_tokens: int = 224
    suppress_tokens: tuple[int, ...] | None = None
    suppress_blank: bool = True
    max_initial_timestamp: float = 1.0
    temperature: tuple[float, ...] = fallback_temperatures(0.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    silence_threshold_db: float | None = -60.0
    condition_on_previous_text: bool = True
    initial_prompt: str | None = None
    prefix: str | None = None
    seed: int | None = None
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    max_completion_tokens: int | None = None
    hotwords: str | None = None
    beam_size: int = 1
    patience: float = 1.0
    length_penalty: float | None = None
    word_timestamps: bool = False
    prepend_punctuations: str = "\"'\u201c\u00bf([{-"
    append_punctuations: str = "\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001"
    chunking_strategy: str = "sequential"
    vad_filter: bool = False
    vad_threshold: float = 0.5
    vad_min_silence_ms: int = 500

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.language is not None:
            object.__setattr__(self, "language", normalize_language(self.language))
        if not 1 <= self.max_new_tokens <= 448:
            raise ValueError(f"max_new_tokens must be between 1 and 448, got {self.max_new_tokens}")
        if not 0.0 <= self.max_initial_timestamp <= 30.0:
            raise ValueError(f"max_initial_timestamp must be within a 30 s window, got {self.max_initial_timestamp}")
        temperatures = (self.temperature,) if isinstance(self.temperature, (int, float)) else tuple(self.temperature)
        if not temperatures or any(t < 0 for t in temperatures):
            raise ValueError(f"temperature must be one or more values >= 0, got {self.temperature}")
        object.__setattr__(self, "temperature", tuple(float(t) for t in temperatures))
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be at least 1, got {self.beam_size}")
        self._check_sampling()
        if self.patience <= 0:
            raise ValueError(f"patience must be positive, got {self.patience}")
        if self.length_penalty is not None and not 0.0 <= self.length_penalty <= 1.0:
            raise ValueError(f"length_penalty must be between 0 and 1, got {self.length_penalty}")
        if self.prefix and self.timestamps:
            raise ValueError("a forced prefix needs timestamps=False (timestamp tokens must come first)")
        if self.chunking_strategy not in CHUNKING_STRATEGIES:
            raise ValueError(f"chunking_strategy must be one of {CHUNKING_STRATEGIES}, got {self.chunking_strategy!r}")
        if not 0.0 < self.vad_threshold < 1.0:
            raise ValueError(f"vad_threshold must be between 0 and 1, got {self.vad_threshold}")
        if self.vad_min_silence_ms < 0:
            raise ValueError(f"vad_min_silence_ms cannot be negative, got {self.vad_min_silence_ms}")
        if self.suppress_tokens is not None:
            object.__setattr__(self, "suppress_tokens", tuple(int(t) for t in self.suppress_tokens))

    def _check_sampling(self) -> None:
        """Ranges of the sampling options, as vLLM checks them."""
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise ValueError(f"seed must fit in a 64-bit signed integer, got {self.seed}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 (all tokens) or positive, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not self.repetition_penalty > 0.0:
            raise ValueError(f"repetition_penalty must be greater than 0, got {self.repetition_penalty}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not PENALTY_RANGE[0] <= value <= PENALTY_RANGE[1]:
                raise ValueError(f"{name} must be between -2 and 2, got {value}")
        if self.max_completion_tokens is not None and self.max_completion_tokens < 1:
            raise ValueError(f"max_completion_tokens must be at least 1, got {self.max_completion_tokens}")
