"""Reference word alignment for one window, without the engine: the window's cross K/V from its features or
encoder output, the same alignment pass the engine runs (batch of one), then transcribe/alignment.py's DTW and
word grouping. The oracle the engine's alignment requests are tested against."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vllm_whisper.audio.features import N_FRAMES, pad_or_trim_frames
from vllm_whisper.engine.alignment import AlignmentOutput, AlignmentParams
from vllm_whisper.engine.alignment_pass import AlignmentRow, alignment_heads, run_alignment_pass
from vllm_whisper.model_executor.loader import LoadedModel
from vllm_whisper.model_executor.whisper import CrossKV, EncodedWindow, WhisperModel
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.transcribe.alignment import WordTiming, apply_word_timings, tokens_per_segment, word_timings
from vllm_whisper.transcribe.result import Segment


def window_cross_kv(
    model: WhisperModel, features: Tensor | None, encoder_output: Tensor | EncodedWindow | CrossKV | None
) -> CrossKV:
    """Cross K/V of the window: given (a list), from an EncodedWindow, from an encoder output, or by running
    the encoder."""
    if isinstance(encoder_output, list):
        return encoder_output
    if isinstance(encoder_output, EncodedWindow):
        return encoder_output.cross_kv
    if encoder_output is not None:
        states = encoder_output if encoder_output.ndim == 3 else encoder_output.unsqueeze(0)
        expected = (1, model.config.max_source_positions, model.config.d_model)
        if tuple(states.shape) != expected:
            raise ValueError(f"encoder_output must have shape {expected[1:]} or {expected}, got "
                             f"{tuple(encoder_output.shape)}")
        return model.compute_cross_kv(states.to(device=model.device, dtype=model.dtype))
    if features is None:
        raise ValueError("find_alignment needs the window's mel features or its encoder output")
    if features.ndim != 2 or features.shape[0] != model.config.num_mel_bins or features.shape[1] > N_FRAMES:
        raise ValueError(f"features must be ({model.config.num_mel_bins}, <= {N_FRAMES}) log-mel frames, got "
                         f"{tuple(features.shape)}")
    mel = pad_or_trim_frames(features).unsqueeze(0).to(model.device)
    return model.compute_cross_kv(model.encode(mel))


@torch.inference_mode()
def reference_alignment(loaded: LoadedModel, cross_kv: CrossKV, prompt: list[int],
                        params: AlignmentParams) -> AlignmentOutput:
    """The engine's alignment pass for one window whose cross K/V the caller holds."""
    params.validate(loaded.tokenizer.eot)
    row = AlignmentRow(cross_kv, prompt, params)
    [output] = run_alignment_pass(loaded.model, alignment_heads(loaded.config), loaded.tokenizer.eot, [row])
    return output


@torch.inference_mode()
def find_alignment(
    loaded: LoadedModel,
    text_tokens: Sequence[int],
    num_frames: int,
    *,
    features: Tensor | None = None,
    encoder_output: Tensor | EncodedWindow | CrossKV | None = None,
    language: str | None = None,
    task: str = "transcribe",
    medfilt_width: int = 7,
    qk_scale: float = 1.0,
) -> list[WordTiming]:
    """Time every word of `text_tokens` in one window (seconds from the window start).

    Give the window's (n_mels, 3000) `features`, or its `encoder_output` ((1500, d) / (1, 1500, d) tensor, or
    the EncodedWindow a decoder already built) to skip the encoder. `num_frames` is the mel frames of real
    audio in the window (at most 3000); attention beyond it is ignored.
    """
    tokenizer = loaded.tokenizer
    params = AlignmentParams(tuple(int(t) for t in text_tokens), num_frames, medfilt_width, qk_scale)
    params.validate(tokenizer.eot)
    if not params.text_tokens:
        return []
    cross_kv = window_cross_kv(loaded.model, features, encoder_output)
    prompt = tokenizer.sot_sequence(language, task, timestamps=False)
    aligned = reference_alignment(loaded, cross_kv, prompt, params)
    return word_timings(tokenizer, params.text_tokens, aligned, language)


def add_word_timestamps(
    loaded: LoadedModel,
    segments: list[Segment],
    features: Tensor | None,
    language: str | None,
    params: TranscriptionParams,
    num_frames: int,
    last_speech_timestamp: float,
    encoder_output: Tensor | EncodedWindow | CrossKV | None = None,
    *,
    medfilt_width: int = 7,
    qk_scale: float = 1.0,
) -> float:
    """Fill `Segment.words` for the segments of one window (aligned together in one decoder pass), adjust the
    segments' start/end to their words, and return the new last-speech time (the last word's end).

    `features` / `encoder_output` are as in find_alignment; the window offset is the segments' `seek`.
    """
    if not segments:
        return last_speech_timestamp
    tokens = tokens_per_segment(segments, loaded.tokenizer.eot)
    text_tokens = [t for segment_tokens in tokens for t in segment_tokens]
    alignment = find_alignment(loaded, text_tokens, num_frames, features=features, encoder_output=encoder_output,
                               language=language, task=params.task, medfilt_width=medfilt_width,
                               qk_scale=qk_scale)
    return apply_word_timings(segments, tokens, alignment, params, last_speech_timestamp)
