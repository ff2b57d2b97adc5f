"""Word-level timestamps from the cross-attention of the model's alignment heads (the openai-whisper method).

One teacher-forced decoder pass over <|sot|>..<|notimestamps|> + text + <|endoftext|> records the attention
scores of the alignment heads; normalised, median-filtered and averaged, they form a token x frame similarity
that dynamic time warping turns into a monotonic path. A word starts at the frame where the path reaches its
first token. The same pass gives each token's probability. Segment-level helpers then apply the reference's
heuristics for implausibly long words and move segment bounds onto the words.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vllm_whisper.audio.features import FRAMES_PER_SECOND, N_FRAMES, pad_or_trim_frames
from vllm_whisper.model_executor.loader import LoadedModel
from vllm_whisper.model_executor.whisper import ContiguousKVCache, CrossKV, EncodedWindow, WhisperModel
from vllm_whisper.model_executor.whisper_config import WhisperConfig
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.tokenizer import WhisperTokenizer
from vllm_whisper.transcribe.result import Segment, Word

TOKENS_PER_SECOND = FRAMES_PER_SECOND // 2  # encoder frames per second: the conv stem halves the mel rate
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
SENTENCE_END_MARKS = ".。!！?？"
MAX_MEDIAN_WORD_SECONDS = 0.7
REPLACEMENT_CHAR = "\ufffd"


@dataclass
class WordTiming:
    """One word of a window: its text, tokens, window-relative span in seconds and mean token probability."""

    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


# --- alignment heads and attention capture -----------------------------------------------------------------
def alignment_heads(config: WhisperConfig) -> list[tuple[int, int]]:
    """The checkpoint's (layer, head) alignment heads, or every head of the upper half of the decoder."""
    if config.alignment_heads:
        return [(int(layer), int(head)) for layer, head in config.alignment_heads]
    first = config.decoder_layers // 2
    return [(layer, head) for layer in range(first, config.decoder_layers)
            for head in range(config.decoder_attention_heads)]


class CrossAttentionRecorder(ContiguousKVCache):
    """The reference decoder attention, also keeping the pre-softmax cross-attention scores q.k/sqrt(d) of the
    chosen heads (batch row 0), so the decoder itself needs no hooks."""

    def __init__(self, cross_kv: CrossKV, heads: Sequence[tuple[int, int]]):
        super().__init__(len(cross_kv), cross_kv)
        self.heads = list(heads)
        self._heads_by_layer: dict[int, list[int]] = {}
        for layer, head in self.heads:
            self._heads_by_layer.setdefault(layer, []).append(head)
        self._scores: dict[tuple[int, int], Tensor] = {}

    def cross_attend(self, layer: int, q: Tensor) -> Tensor:
        heads = self._heads_by_layer.get(layer)
        if heads:
            index = torch.tensor(heads, device=q.device)
            k = self.cross_kv[layer][0][0, index].float()
            scores = q[0, index].float() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            for head, head_scores in zip(heads, scores):
                self._scores[(layer, head)] = head_scores
        return super().cross_attend(layer, q)

    def scores(self) -> Tensor:
        """(heads, tokens, encoder frames) scores of every recorded head, in self.heads order."""
        missing = [h for h in self.heads if h not in self._scores]
        if missing:
            raise ValueError(f"alignment heads {missing} are not in this model's decoder")
        return torch.stack([self._scores[h] for h in self.heads])


# --- signal processing ----------------------------------------------------------------------------------------
def median_filter(x: Tensor, width: int) -> Tensor:
    """Median over a sliding window of odd `width` along the last axis, reflect-padded at both ends."""
    if width < 1 or width % 2 == 0:
        raise ValueError(f"median filter width must be a positive odd number, got {width}")
    pad = width // 2
    if x.shape[-1] <= pad or width == 1:
        return x  # too short to reflect-pad: leave as is, like the reference
    lead = x.shape[:-1]
    flat = x.reshape(1, -1, x.shape[-1])
    padded = F.pad(flat, (pad, pad), mode="reflect")
    return padded.unfold(-1, width, 1).sort(dim=-1).values[..., pad].reshape(*lead, x.shape[-1])


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest monotonic path through a (rows, cols) cost matrix from (0, 0) to the last cell, moving right,
    down or diagonally; returns the path's row and column indices. Rows are scanned with a prefix minimum."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.size == 0:
        raise ValueError(f"dtw needs a non-empty 2-D cost matrix, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("dtw cost matrix contains NaN or infinite values")
    return _backtrace(_dtw_trace(cost))


def _dtw_trace(cost: np.ndarray) -> np.ndarray:
    """Move taken into each cell of the accumulated-cost table (0 diagonal, 1 from above, 2 from the left);
    ties prefer the diagonal, then above (openai-whisper's loop instead takes the left cell when diagonal and
    above tie, even if the left one costs more; real-valued attention practically never ties).

    Row i's recurrence acc[j] = x[j] + min(best_above[j], acc[j-1]) unrolls to
    acc[j] = S[j] + min_{k<=j}(best_above[k] - S[k-1]) with S the row's prefix sum: one cumulative minimum.
    """
    rows, cols = cost.shape
    previous = np.full(cols + 1, np.inf)
    previous[0] = 0.0
    trace = np.full((rows + 1, cols + 1), 2, dtype=np.int8)  # row 0: only left moves remain
    trace[1:, 0] = 1  # column 0: only upward moves remain
    for i in range(1, rows + 1):
        diagonal, above = previous[:-1], previous[1:]
        best_above = np.minimum(diagonal, above)
        prefix = np.concatenate(([0.0], np.cumsum(cost[i - 1])))
        current = np.empty(cols + 1)
        current[0] = np.inf
        current[1:] = prefix[1:] + np.minimum.accumulate(best_above - prefix[:-1])
        left = current[:-1]
        move = np.where(above <= left, 1, 2).astype(np.int8)
        move[(diagonal <= above) & (diagonal <= left)] = 0
        trace[i, 1:] = move
        previous = current
    return trace


def _backtrace(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walk the trace back from the last cell; returns (row indices, column indices) in path order."""
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    path: list[tuple[int, int]] = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        move = trace[i, j]
        if move == 0:
            i, j = i - 1, j - 1
        elif move == 1:
            i -= 1
        else:
            j -= 1
    rows, cols = np.array(path[::-1]).T
    return rows, cols


# --- word splitting and punctuation ------------------------------------------------------------------------
def split_to_word_tokens(
    tokenizer: WhisperTokenizer, tokens: Sequence[int], language: str | None
) -> tuple[list[str], list[list[int]]]:
    """Words and their tokens: unicode-complete token groups for languages written without spaces, else
    groups that start at a space or a punctuation mark."""
    if language in NO_SPACE_LANGUAGES:
        return _split_on_unicode(tokenizer, tokens)
    return _split_on_spaces(tokenizer, tokens)


def _split_on_unicode(tokenizer: WhisperTokenizer, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
    """Shortest token groups that decode to whole characters (byte-level BPE can split one character)."""
    full = tokenizer.decode(list(tokens))
    words: list[str] = []
    groups: list[list[int]] = []
    current: list[int] = []
    offset = 0
    for token in tokens:
        current.append(token)
        decoded = tokenizer.decode(current)
        bad = decoded.find(REPLACEMENT_CHAR)
        if bad < 0 or (offset + bad < len(full) and full[offset + bad] == REPLACEMENT_CHAR):
            words.append(decoded)
            groups.append(current)
            current = []
            offset += len(decoded)
    if current:  # a trailing incomplete character still belongs to some word
        words.append(tokenizer.decode(current))
        groups.append(current)
    return words, groups


def _split_on_spaces(tokenizer: WhisperTokenizer, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
    """Merge unicode groups into words: a new word begins at a leading space or a punctuation group."""
    words: list[str] = []
    groups: list[list[int]] = []
    for subword, subword_tokens in zip(*_split_on_unicode(tokenizer, tokens)):
        starts_word = subword.startswith(" ") or subword.strip() in string.punctuation
        if starts_word or not words:
            words.append(subword)
            groups.append(list(subword_tokens))
        else:
            words[-1] += subword
            groups[-1].extend(subword_tokens)
    return words, groups


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """In place: fold opening punctuation into the following word and closing punctuation into the preceding
    one (the emptied entries keep their place with word '' and no tokens)."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


# --- one window ----------------------------------------------------------------------------------------------
@dataclass
class _ForcedPass:
    """What the teacher-forced decoder pass yields for alignment."""

    scores: Tensor  # (heads, n_text + 1, 1500): rows from <|notimestamps|> up to the last text token
    token_probs: list[float]  # probability of each text token given the ones before it


def _window_cross_kv(
    model: WhisperModel, features: Tensor | None, encoder_output: Tensor | EncodedWindow | CrossKV | None
) -> CrossKV:
    """Cross K/V of the window: given (a list, e.g. the engine's slot), from an EncodedWindow, from an encoder
    output, or by running the encoder."""
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


def _forced_pass(
    model: WhisperModel, cross_kv: CrossKV, prompt: list[int], text_tokens: list[int], eot: int,
    heads: list[tuple[int, int]],
) -> _ForcedPass:
    """Run prompt + text + <|endoftext|> through the decoder at once, recording the alignment heads."""
    tokens = prompt + text_tokens + [eot]
    limit = model.config.max_target_positions
    if len(tokens) > limit:
        raise ValueError(f"{len(text_tokens)} text tokens plus the prompt exceed the decoder's {limit} positions")
    recorder = CrossAttentionRecorder(cross_kv, heads)
    ids = torch.tensor([tokens], device=model.device)
    positions = torch.arange(len(tokens), device=model.device)[None]
    hidden = model.decode(ids, positions, recorder)
    first, last = len(prompt) - 1, len(prompt) - 1 + len(text_tokens)
    logits = model.compute_logits(hidden[0, first:last])[:, :eot]
    rows = torch.arange(len(text_tokens), device=logits.device)
    probs = logits.softmax(dim=-1)[rows, torch.tensor(text_tokens, device=logits.device)]
    return _ForcedPass(recorder.scores()[:, first:last + 1], probs.tolist())


def _alignment_matrix(scores: Tensor, num_frames: int, medfilt_width: int, qk_scale: float) -> np.ndarray:
    """Token x frame similarity: per-head softmax over the audio's frames, per-frame standardisation across
    tokens, median filter along time, mean over heads."""
    weights = (scores[:, :, : num_frames // 2] * qk_scale).softmax(dim=-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = (weights - mean) / std.clamp_min(1e-10)
    return median_filter(weights, medfilt_width).mean(dim=0).double().cpu().numpy()


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
    text_tokens = [int(t) for t in text_tokens]
    if not 2 <= num_frames <= N_FRAMES:
        raise ValueError(f"num_frames must be between 2 and {N_FRAMES} mel frames, got {num_frames}")
    if any(not 0 <= t < tokenizer.eot for t in text_tokens):
        raise ValueError("text_tokens must be ordinary text tokens (ids below <|endoftext|>); drop timestamps")
    if medfilt_width < 1 or medfilt_width % 2 == 0:
        raise ValueError(f"medfilt_width must be a positive odd number, got {medfilt_width}")
    if not text_tokens:
        return []
    model = loaded.model
    prompt = tokenizer.sot_sequence(language, task, timestamps=False)
    cross_kv = _window_cross_kv(model, features, encoder_output)
    forced = _forced_pass(model, cross_kv, prompt, text_tokens, tokenizer.eot, alignment_heads(loaded.config))
    matrix = _alignment_matrix(forced.scores, num_frames, medfilt_width, qk_scale)
    text_indices, time_indices = dtw(-matrix)
    jumps = np.diff(text_indices, prepend=-1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND  # first frame of each token row; last row is eot
    words, word_tokens = split_to_word_tokens(tokenizer, text_tokens, language)
    bounds = np.concatenate(([0], np.cumsum([len(t) for t in word_tokens])))
    return [
        WordTiming(word, tokens, float(jump_times[a]), float(jump_times[b]), float(np.mean(forced.token_probs[a:b])))
        for word, tokens, a, b in zip(words, word_tokens, bounds[:-1], bounds[1:])
    ]


# --- segments of one window ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Durations:
    """Typical word length of a window, for the long-word heuristics."""

    median: float
    max: float


def _word_durations(alignment: list[WordTiming]) -> _Durations:
    """Median non-zero word duration, capped at 0.7 s; words may last twice that."""
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median = min(MAX_MEDIAN_WORD_SECONDS, float(np.median(durations))) if len(durations) else 0.0
    return _Durations(median, 2 * median)


def _truncate_at_sentence_ends(alignment: list[WordTiming], max_duration: float) -> None:
    """Shorten overlong sentence-final marks and overlong words that open a sentence (they absorb pauses)."""
    for i in range(1, len(alignment)):
        word = alignment[i]
        if word.end - word.start > max_duration:
            if word.word in SENTENCE_END_MARKS:
                word.end = word.start + max_duration
            elif alignment[i - 1].word in SENTENCE_END_MARKS:
                word.start = word.end - max_duration


def _words_per_segment(
    alignment: list[WordTiming], tokens_per_segment: list[list[int]], offset: float
) -> list[list[Word]]:
    """Deal the window's words out to segments by token count, in absolute seconds; empty words are dropped."""
    result: list[list[Word]] = []
    index = 0
    for tokens in tokens_per_segment:
        words: list[Word] = []
        taken = 0
        while index < len(alignment) and taken < len(tokens):
            timing = alignment[index]
            if timing.word:
                words.append(Word(timing.word, round(offset + timing.start, 3), round(offset + timing.end, 3),
                                  timing.probability))
            taken += len(timing.tokens)
            index += 1
        result.append(words)
    return result


def _fit_segment(segment: Segment, words: list[Word], durations: _Durations, last_speech: float) -> None:
    """The reference's boundary fixes: shorten a long first word after a pause, pull a first / last word that
    overshoots the segment timestamp by more than 0.5 s back towards it; then the segment spans its words."""
    median, longest = durations.median, durations.max
    first = words[0]
    if first.end - last_speech > median * 4 and (
        first.end - first.start > longest or (len(words) > 1 and words[1].end - first.start > longest * 2)
    ):
        if len(words) > 1 and words[1].end - words[1].start > longest:
            boundary = round(max(words[1].end / 2, words[1].end - longest), 3)
            first.end = words[1].start = boundary
        first.start = round(max(0.0, first.end - longest), 3)
    if segment.start < first.end and segment.start - 0.5 > first.start:
        first.start = round(max(0.0, min(first.end - median, segment.start)), 3)
    segment.start = first.start  # unlike the reference, the segment always spans its words
    last = words[-1]
    if segment.end > last.start and segment.end + 0.5 < last.end:
        last.end = round(max(last.start + median, segment.end), 3)
    segment.end = last.end


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
    seek = segments[0].seek
    if any(s.seek != seek for s in segments):
        raise ValueError("add_word_timestamps aligns one window at a time: all segments need the same seek")
    eot = loaded.tokenizer.eot
    tokens_per_segment = [[t for t in s.tokens if t < eot] for s in segments]
    text_tokens = [t for tokens in tokens_per_segment for t in tokens]
    alignment = find_alignment(loaded, text_tokens, num_frames, features=features, encoder_output=encoder_output,
                               language=language, task=params.task, medfilt_width=medfilt_width,
                               qk_scale=qk_scale)
    durations = _word_durations(alignment)
    if durations.median > 0:
        _truncate_at_sentence_ends(alignment, durations.max)
    merge_punctuations(alignment, params.prepend_punctuations, params.append_punctuations)
    offset = seek / FRAMES_PER_SECOND
    for segment, words in zip(segments, _words_per_segment(alignment, tokens_per_segment, offset)):
        if words:
            _fit_segment(segment, words, durations, last_speech_timestamp)
            last_speech_timestamp = segment.end
        segment.words = words
    ends = [w.end for s in segments for w in s.words or []]
    return ends[-1] if ends else last_speech_timestamp
