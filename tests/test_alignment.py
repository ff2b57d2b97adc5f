"""Word timestamps from cross-attention (vllm_whisper.transcribe.alignment; the reference pass in
vllm_whisper.decoding.alignment): DTW, median filter, word splitting, punctuation merging, and word timing
accuracy on real speech with known word positions (tiny.en, flite)."""

from __future__ import annotations

import difflib
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from vllm_whisper.audio.decode import SAMPLE_RATE, load_audio
from vllm_whisper.audio.features import HOP_LENGTH, N_FRAMES, N_SAMPLES, log_mel_spectrogram
from vllm_whisper.decoding.greedy import encode_window
from vllm_whisper.decoding.reference_runner import transcribe_sequential
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.testing.speech import HARVARD_SENTENCES, synthesize
from vllm_whisper.decoding.alignment import add_word_timestamps, find_alignment
from vllm_whisper.engine.alignment_pass import alignment_heads, median_filter
from vllm_whisper.transcribe.alignment import WordTiming, dtw, merge_punctuations, split_to_word_tokens
from vllm_whisper.transcribe.result import Segment, TranscriptionResult

PARAMS = TranscriptionParams(language="en", temperature=(0.0,), word_timestamps=True)


# --- DTW and median filter ------------------------------------------------------------------------------------
def naive_dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell-by-cell DTW (ties prefer diagonal, then above), as the oracle for the vectorised one."""
    rows, cols = cost.shape
    acc = np.full((rows + 1, cols + 1), np.inf)
    acc[0, 0] = 0.0
    trace = np.zeros((rows + 1, cols + 1), dtype=int)
    for j in range(1, cols + 1):
        for i in range(1, rows + 1):
            c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
            move, best = (0, c0) if c0 <= c1 and c0 <= c2 else (1, c1) if c1 <= c2 else (2, c2)
            acc[i, j] = cost[i - 1, j - 1] + best
            trace[i, j] = move
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = rows, cols, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        i, j = {0: (i - 1, j - 1), 1: (i - 1, j), 2: (i, j - 1)}[trace[i, j]]
    return tuple(np.array(path[::-1]).T)


def test_dtw_hand_made_matrix_gives_known_path():
    cost = np.array([
        [0, 1, 9, 9, 9, 9],
        [9, 0, 0, 9, 9, 9],
        [9, 9, 9, 0, 9, 9],
        [9, 9, 9, 0, 9, 9],
        [9, 9, 9, 9, 0, 0],
    ], dtype=float)
    rows, cols = dtw(cost)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 0), (1, 1), (1, 2), (2, 3), (3, 3), (4, 4), (4, 5)]
    rows, cols = dtw(np.zeros((3, 3)))  # all ties: the diagonal wins
    assert rows.tolist() == cols.tolist() == [0, 1, 2]


def test_dtw_matches_cell_by_cell_oracle_and_is_fast():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (1, 6), (6, 1), (4, 9), (12, 40), (30, 120)]:
        cost = rng.normal(size=shape)
        for ours, expected in zip(dtw(cost), naive_dtw(cost)):
            np.testing.assert_array_equal(ours, expected)
    big = rng.normal(size=(200, 1500))
    started = time.perf_counter()
    rows, cols = dtw(big)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.1, f"dtw of 200 x 1500 took {elapsed:.3f} s"
    assert rows[0] == cols[0] == 0 and rows[-1] == 199 and cols[-1] == 1499
    assert set(np.diff(rows)) <= {0, 1} and set(np.diff(cols)) <= {0, 1}


def test_dtw_rejects_bad_input():
    with pytest.raises(ValueError):
        dtw(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        dtw(np.zeros(5))
    with pytest.raises(ValueError):
        dtw(np.array([[0.0, np.nan]]))


def test_median_filter_matches_direct_computation():
    x = torch.randn(2, 3, 20)
    width = 7
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (3, 3)), mode="reflect")
    expected = np.stack([np.median(padded[..., t:t + width], axis=-1) for t in range(20)], axis=-1)
    np.testing.assert_allclose(median_filter(x, width).numpy(), expected, rtol=0, atol=0)
    assert torch.equal(median_filter(x, 1), x)
    short = torch.randn(2, 3)
    assert torch.equal(median_filter(short, 7), short)  # too short to pad: unchanged, as in the reference
    with pytest.raises(ValueError):
        median_filter(x, 4)


# --- word splitting and punctuation ----------------------------------------------------------------------------
def test_split_on_spaces_and_punctuation(tiny_en):
    tok = tiny_en.tokenizer
    ids = tok.encode(" Hello, world's backgrounds end.")
    words, groups = split_to_word_tokens(tok, ids, "en")
    assert words == [" Hello", ",", " world's", " backgrounds", " end", "."]
    assert [t for g in groups for t in g] == ids
    assert [tok.decode(g) for g in groups] == words


def test_split_on_unicode_for_languages_without_spaces(tiny_en):
    tok = tiny_en.tokenizer
    text = "你好世界，我们走吧"
    ids = tok.encode(text)
    assert len(ids) > len(text)  # tiny.en's byte-level BPE splits characters across tokens
    words, groups = split_to_word_tokens(tok, ids, "zh")
    assert "".join(words) == text
    assert all("\ufffd" not in w and w for w in words)
    assert [t for g in groups for t in g] == ids


def timing(word: str, tokens: list[int]) -> WordTiming:
    return WordTiming(word, tokens, 0.0, 0.0, 1.0)


def test_merge_punctuations_like_the_reference():
    alignment = [timing(" (", [1]), timing("Hi", [2]), timing(")", [3]), timing(" there", [4]), timing(".", [5]),
                 timing(" \"", [6]), timing(" Go", [7]), timing("!\"", [8])]
    merge_punctuations(alignment, PARAMS.prepend_punctuations, PARAMS.append_punctuations)
    assert [(t.word, t.tokens) for t in alignment] == [
        ("", []), (" (Hi)", [1, 2, 3]), ("", []), (" there.", [4, 5]), ("", []), ("", []), (" \" Go", [6, 7]),
        ("!\"", [8]),  # '!"' is not one of the appended marks, so it stays a word of its own
    ]


# --- find_alignment input checks ------------------------------------------------------------------------------
def test_alignment_heads_from_checkpoint_or_upper_half(tiny_en):
    assert alignment_heads(tiny_en.config) == [tuple(h) for h in tiny_en.config.alignment_heads]
    assert len(alignment_heads(tiny_en.config)) > 0
    bare = replace(tiny_en.config, alignment_heads=())
    heads = alignment_heads(bare)
    assert heads == [(layer, head) for layer in (2, 3) for head in range(bare.decoder_attention_heads)]


def test_find_alignment_rejects_bad_input(tiny_en):
    tok = tiny_en.tokenizer
    text = tok.encode(" Hello world.")
    features = torch.zeros(tiny_en.config.num_mel_bins, N_FRAMES)
    with pytest.raises(ValueError, match="text tokens"):
        find_alignment(tiny_en, [tok.timestamp_begin, *text], 3000, features=features)
    with pytest.raises(ValueError, match="num_frames"):
        find_alignment(tiny_en, text, 4000, features=features)
    with pytest.raises(ValueError, match="features"):
        find_alignment(tiny_en, text, 3000)
    with pytest.raises(ValueError, match="features"):
        find_alignment(tiny_en, text, 3000, features=torch.zeros(128, N_FRAMES))
    with pytest.raises(ValueError, match="encoder_output"):
        find_alignment(tiny_en, text, 3000, encoder_output=torch.zeros(1, 100, tiny_en.config.d_model))
    with pytest.raises(ValueError, match="medfilt_width"):
        find_alignment(tiny_en, text, 3000, features=features, medfilt_width=6)
    assert find_alignment(tiny_en, [], 3000, features=features) == []


# --- real speech with known word positions --------------------------------------------------------------------
@dataclass(frozen=True)
class TrueWord:
    word: str
    start: float
    end: float


@dataclass
class AlignedSpeech:
    audio: np.ndarray
    truth: list[TrueWord]
    result: TranscriptionResult


def trim_silence(samples: np.ndarray, relative_threshold: float = 0.02) -> np.ndarray:
    """Cut leading / trailing 10 ms frames whose RMS is below 2% of the loudest frame's."""
    frames = samples[: len(samples) // 160 * 160].reshape(-1, 160)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    loud = np.nonzero(rms > relative_threshold * rms.max())[0]
    return samples[loud[0] * 160:(loud[-1] + 1) * 160]


def word_by_word_speech(folder: Path, sentences: tuple[str, ...], seed: int) -> tuple[np.ndarray, list[TrueWord]]:
    """Each word spoken alone (flite slt), trimmed, joined by 0.2-0.4 s of silence (0.5-0.7 s after a sentence)."""
    rng = np.random.default_rng(seed)
    pieces = [np.zeros(int(0.3 * SAMPLE_RATE), np.float32)]
    truth: list[TrueWord] = []
    cursor = len(pieces[0])
    for sentence in sentences:
        for word in re.findall(r"[\w']+", sentence):
            path = folder / f"{word.lower()}.wav"
            clip = trim_silence(load_audio(path if path.is_file() else synthesize(word, path, "flite", "slt").path))
            truth.append(TrueWord(word.lower(), cursor / SAMPLE_RATE, (cursor + len(clip)) / SAMPLE_RATE))
            gap = int(rng.uniform(0.2, 0.4) * SAMPLE_RATE)
            pieces += [clip, np.zeros(gap, np.float32)]
            cursor += len(clip) + gap
        pieces.append(np.zeros(int(0.3 * SAMPLE_RATE), np.float32))
        cursor += len(pieces[-1])
    return np.concatenate(pieces), truth


def transcribe_with_words(loaded, audio: np.ndarray) -> TranscriptionResult:
    """Reference transcription, then word timestamps window by window (each window's segments share a seek)."""
    result = transcribe_sequential(loaded, audio, PARAMS)
    mel = log_mel_spectrogram(audio, loaded.config.num_mel_bins, padding=N_SAMPLES)
    content_frames = len(audio) // HOP_LENGTH
    last_speech = 0.0
    for seek in sorted({s.seek for s in result.segments}):
        window = [s for s in result.segments if s.seek == seek]
        features = mel[:, seek:seek + N_FRAMES]
        last_speech = add_word_timestamps(loaded, window, features, "en", PARAMS,
                                          min(N_FRAMES, content_frames - seek), last_speech)
    return result


@pytest.fixture(scope="module")
def aligned_speech(tiny_en, speech_dir) -> list[AlignedSpeech]:
    folder = speech_dir / "alignment_words"
    folder.mkdir(exist_ok=True)
    out = []
    for seed, sentences in enumerate((HARVARD_SENTENCES[0:3], HARVARD_SENTENCES[10:13])):
        audio, truth = word_by_word_speech(folder, sentences, seed)
        assert len(audio) < N_SAMPLES  # one 30 s window
        out.append(AlignedSpeech(audio, truth, transcribe_with_words(tiny_en, audio)))
    return out


def normalize_word(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def start_errors(speech: AlignedSpeech) -> list[float]:
    """Decoded start - true start for decoded words that line up with the true words."""
    words = [w for s in speech.result.segments for w in s.words]
    matcher = difflib.SequenceMatcher(a=[t.word for t in speech.truth], b=[normalize_word(w.word) for w in words],
                                      autojunk=False)
    return [words[block.b + k].start - speech.truth[block.a + k].start
            for block in matcher.get_matching_blocks() for k in range(block.size)]


def test_word_starts_match_true_starts(aligned_speech):
    errors, total = [], 0
    for speech in aligned_speech:
        file_errors = start_errors(speech)
        print(f"\n{speech.result.text!r}: {len(file_errors)}/{len(speech.truth)} words matched")
        errors += file_errors
        total += len(speech.truth)
    errors = np.abs(np.array(errors))
    within = float(np.mean(errors <= 0.3))
    print(f"word start accuracy: {within:.1%} of {len(errors)} matched words within 0.3 s; "
          f"mean |error| {errors.mean():.3f} s, median {np.median(errors):.3f} s, max {errors.max():.3f} s")
    assert len(errors) >= 0.7 * total, "tiny.en recognised too few words to judge the timing"
    assert within >= 0.85


def test_words_are_ordered_and_inside_their_segments(aligned_speech):
    for speech in aligned_speech:
        previous_end = 0.0
        for segment in speech.result.segments:
            assert segment.words, f"segment {segment.text!r} has no words"
            for word in segment.words:
                assert word.word and 0.0 < word.probability <= 1.0
                assert previous_end - 1e-6 <= word.start <= word.end
                assert segment.start - 1e-6 <= word.start and word.end <= segment.end + 1e-6
                previous_end = word.end


def test_words_concatenate_to_segment_text(aligned_speech):
    for speech in aligned_speech:
        for segment in speech.result.segments:
            assert "".join(w.word for w in segment.words).strip() == segment.text.strip()


def test_precomputed_encoder_output_gives_the_same_words(tiny_en, aligned_speech):
    speech = aligned_speech[0]
    segments = [s for s in speech.result.segments if s.seek == 0]
    text_tokens = [t for s in segments for t in s.tokens if t < tiny_en.tokenizer.eot]
    features = log_mel_spectrogram(speech.audio, tiny_en.config.num_mel_bins, padding=N_SAMPLES)[:, :N_FRAMES]
    num_frames = len(speech.audio) // HOP_LENGTH
    from_features = find_alignment(tiny_en, text_tokens, num_frames, features=features, language="en")
    window = encode_window(tiny_en.model, features)
    for encoder_output in (window, window.encoder_out, window.encoder_out[0]):
        again = find_alignment(tiny_en, text_tokens, num_frames, encoder_output=encoder_output, language="en")
        assert [(w.word, w.start, w.end) for w in again] == [(w.word, w.start, w.end) for w in from_features]
        assert [w.probability for w in again] == pytest.approx([w.probability for w in from_features], abs=1e-5)


def test_add_word_timestamps_checks_its_window(tiny_en):
    features = torch.zeros(tiny_en.config.num_mel_bins, N_FRAMES)
    tokens = tiny_en.tokenizer.encode(" Hi.")
    segments = [Segment(0, 0, 0.0, 1.0, " Hi.", tokens), Segment(1, 3000, 30.0, 31.0, " Hi.", tokens)]
    with pytest.raises(ValueError, match="seek"):
        add_word_timestamps(tiny_en, segments, features, "en", PARAMS, N_FRAMES, 0.0)
    assert add_word_timestamps(tiny_en, [], features, "en", PARAMS, N_FRAMES, 1.5) == 1.5
