"""Word-level timestamps from the cross-attention of the model's alignment heads (the openai-whisper method):
the post-processing half.

The engine runs the teacher-forced pass over <|sot|>..<|notimestamps|> + text + <|endoftext|> as an alignment
request (engine/alignment_pass.py) and returns the alignment heads' token x frame similarity and each token's
probability. Here dynamic time warping turns the similarity into a monotonic path; a word starts at the frame
where the path reaches its first token. Segment-level helpers then apply the reference's heuristics for
implausibly long words and move segment bounds onto the words.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vllm_whisper.audio.features import FRAMES_PER_SECOND
from vllm_whisper.engine.alignment import AlignmentOutput
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


# --- dynamic time warping ------------------------------------------------------------------------------------
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
def word_timings(tokenizer: WhisperTokenizer, text_tokens: Sequence[int], aligned: AlignmentOutput,
                 language: str | None) -> list[WordTiming]:
    """Time every word of `text_tokens` in one window (seconds from the window start) from the engine's
    alignment output for those tokens."""
    text_indices, time_indices = dtw(-aligned.matrix)
    jumps = np.diff(text_indices, prepend=-1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND  # first frame of each token row; last row is eot
    words, word_tokens = split_to_word_tokens(tokenizer, text_tokens, language)
    bounds = np.concatenate(([0], np.cumsum([len(t) for t in word_tokens])))
    return [
        WordTiming(word, tokens, float(jump_times[a]), float(jump_times[b]), float(np.mean(aligned.token_probs[a:b])))
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


def tokens_per_segment(segments: list[Segment], eot: int) -> list[list[int]]:
    """The text tokens of each segment of one window (what its alignment request aligns, concatenated); a
    ValueError when the segments are not all of one window."""
    if any(s.seek != segments[0].seek for s in segments):
        raise ValueError("word timestamps align one window at a time: all segments need the same seek")
    return [[t for t in s.tokens if t < eot] for s in segments]


def apply_word_timings(segments: list[Segment], tokens: list[list[int]], alignment: list[WordTiming],
                       params: TranscriptionParams, last_speech_timestamp: float) -> float:
    """Fill `Segment.words` for the segments of one window from its word timings, adjust the segments'
    start/end to their words, and return the new last-speech time (the last word's end). The window offset is
    the segments' `seek`; `tokens` are their text tokens (tokens_per_segment)."""
    if not segments:
        return last_speech_timestamp
    durations = _word_durations(alignment)
    if durations.median > 0:
        _truncate_at_sentence_ends(alignment, durations.max)
    merge_punctuations(alignment, params.prepend_punctuations, params.append_punctuations)
    offset = segments[0].seek / FRAMES_PER_SECOND
    for segment, words in zip(segments, _words_per_segment(alignment, tokens, offset)):
        if words:
            _fit_segment(segment, words, durations, last_speech_timestamp)
            last_speech_timestamp = segment.end
        segment.words = words
    ends = [w.end for s in segments for w in s.words or []]
    return ends[-1] if ends else last_speech_timestamp
