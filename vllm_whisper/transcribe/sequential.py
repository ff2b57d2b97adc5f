"""Sequential long-form transcription: decode a 30 s window, move the seek to its last timestamp, repeat.

The window decoder is passed in, so the same loop runs on the reference greedy decoder today and on the batched
engine once it lands. Features are computed once for the whole file (audio padded with 30 s of silence, as the
reference does) and sliced per window, so a file's first window equals the single-window features exactly.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from vllm_whisper.audio.decode import SAMPLE_RATE
from vllm_whisper.audio.features import HOP_LENGTH, N_FRAMES, N_SAMPLES, log_mel_spectrogram
from vllm_whisper.decoding.greedy import EncodedWindow, WindowDecodeResult, detect_language, encode_window, greedy_decode
from vllm_whisper.decoding.logits_rules import LogitsRules
from vllm_whisper.model_executor.loader import LoadedModel
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.transcribe.result import Segment, TranscriptionResult, compression_ratio
from vllm_whisper.transcribe.segments import split_window

WindowDecoder = Callable[[EncodedWindow, list[int], LogitsRules, int], WindowDecodeResult]


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


def reference_window_decoder(loaded: LoadedModel) -> WindowDecoder:
    """Decode windows one at a time with the greedy oracle."""

    def decode(window: EncodedWindow, prompt: list[int], rules: LogitsRules, max_new_tokens: int):
        return greedy_decode(loaded.model, window, prompt, rules, max_new_tokens, prompt.index(loaded.tokenizer.sot))

    return decode


def transcribe_sequential(
    loaded: LoadedModel,
    audio: np.ndarray,
    params: TranscriptionParams,
    decode_window: WindowDecoder | None = None,
) -> TranscriptionResult:
    """Transcribe 16 kHz mono audio of any length window by window."""
    decode_window = decode_window or reference_window_decoder(loaded)
    tok, model = loaded.tokenizer, loaded.model
    if params.task == "translate" and not tok.is_multilingual:
        raise ValueError(f"The English-only model {loaded.name!r} cannot translate; use a multilingual model.")
    mel = log_mel_spectrogram(audio, loaded.config.num_mel_bins, padding=N_SAMPLES)
    content_frames = len(audio) // HOP_LENGTH
    duration = len(audio) / SAMPLE_RATE
    rules = build_rules(loaded, params)
    language, language_probability = params.language, None
    segments: list[Segment] = []
    seek = 0
    while seek < content_frames:
        window_frames = min(N_FRAMES, content_frames - seek)
        window = encode_window(model, mel[:, seek:seek + N_FRAMES].contiguous())
        if language is None:
            language, probs = detect_language(model, window)
            language_probability = probs[language]
        prompt = model.get_decoder_prompt(language, params.task, params.timestamps)
        result = decode_window(window, prompt, rules, params.max_new_tokens)
        spans, consumed = split_window(result.tokens, tok, seek, window_frames)
        window_ratio = compression_ratio(tok.decode(result.tokens))
        for span in spans:
            text = tok.decode(span.tokens)
            if not text.strip() or (params.timestamps and span.end <= span.start):
                continue
            segments.append(Segment(
                id=len(segments), seek=seek, start=round(span.start, 3), end=round(min(span.end, duration), 3),
                text=text, tokens=span.tokens, temperature=0.0, avg_logprob=result.avg_logprob,
                compression_ratio=window_ratio, no_speech_prob=result.no_speech_prob,
            ))
        seek += consumed
    text = "".join(s.text for s in segments).strip()
    return TranscriptionResult(text, language or "en", round(duration, 3), segments, language_probability)

