"""The offline API: LLM(model=...).transcribe(items) on paths, bytes, file objects and arrays, long audio,
language detection and translation."""

from __future__ import annotations

import io

import numpy as np
import pytest

from vllm_whisper import LLM, TranscriptionParams
from vllm_whisper.audio import AudioDecodeError, load_audio
from vllm_whisper.testing.encode import encode_audio
from vllm_whisper.testing.speech import normalize_text, synthesize


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(model="tiny.en")


def test_all_input_kinds(llm, english_clips, tmp_path):
    clips = english_clips[:5]
    mp3 = encode_audio(load_audio(clips[3].path), 16000, tmp_path / "clip.mp3")
    items = [
        str(clips[0].path),
        clips[1].path.read_bytes(),
        io.BytesIO(clips[2].path.read_bytes()),
        mp3,
        load_audio(clips[4].path),
    ]
    results = llm.transcribe(items)
    assert len(results) == 5
    for clip, result in zip(clips, results):
        expected = set(normalize_text(clip.text).split())
        got = set(normalize_text(result.text).split())
        assert len(expected & got) >= len(expected) // 2, (clip.text, result.text)
        assert result.language == "en"
        assert result.duration == pytest.approx(len(load_audio(clip.path)) / 16000, abs=0.1)
        assert result.segments and all(0 <= s.start < s.end <= result.duration + 0.02 for s in result.segments)
        assert result.text == "".join(s.text for s in result.segments).strip()


def test_single_item_and_params_object(llm, fox_clip):
    [with_ts] = llm.transcribe(fox_clip.path)
    [without_ts] = llm.transcribe([fox_clip.path], TranscriptionParams(timestamps=False))
    assert "lazy dog" in with_ts.text.lower() and "lazy dog" in without_ts.text.lower()
    assert len(without_ts.segments) == 1 and without_ts.segments[0].start == 0.0
    assert not any(t >= llm.tokenizer.timestamp_begin for t in without_ts.segments[0].tokens)
    assert with_ts.segments[0].tokens[0] >= llm.tokenizer.timestamp_begin


def test_beam_search_through_the_offline_api(llm, english_clips):
    [greedy, beams] = [llm.transcribe([english_clips[3].path], TranscriptionParams(beam_size=b))[0] for b in (1, 5)]
    assert "chicken leg" in beams.text.lower()  # greedy misheard it as "chicken lagers" on this clip
    assert beams.segments and beams.segments[0].tokens[0] >= llm.tokenizer.timestamp_begin
    assert greedy.text != beams.text
    with pytest.raises(ValueError, match="beam_size"):
        TranscriptionParams(beam_size=0)


def test_audio_longer_than_30s_is_chained(llm, english_clips):
    """Four sentences separated by 9 s of silence (~45 s): the last one is decoded from the second window."""
    silence = np.zeros(9 * 16000, dtype=np.float32)
    pieces, starts, position = [], [], 0
    for clip in english_clips[:4]:
        audio = load_audio(clip.path)
        starts.append(position / 16000)
        pieces += [audio, silence]
        position += len(audio) + len(silence)
    [result] = llm.transcribe(np.concatenate(pieces))
    assert result.duration > 40
    assert "lemons" not in result.text  # nothing invented from other clips
    last_words = normalize_text(english_clips[3].text).split()[-2:]
    assert " ".join(last_words) in normalize_text(result.text)
    last_segment = [s for s in result.segments if last_words[-1] in normalize_text(s.text)][-1]
    # Reference semantics for a window that opens with silence: the first timestamp is at most 1 s into the
    # window, so the segment may start early; it must lie in the second window and cover the spoken sentence.
    assert 30.0 <= last_segment.start <= starts[3] + 0.5 and last_segment.end >= starts[3] + 1.5
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    assert all(a.start <= b.start for a, b in zip(result.segments, result.segments[1:]))


def test_language_detection_and_translation_with_base(speech_dir):
    clip = synthesize("El perro come carne en la casa. Mi hermana tiene un gato negro.",
                      speech_dir / "es.wav", "espeak-ng", "es", words_per_minute=140)
    base = LLM(model="base")
    [detected] = base.transcribe(clip.path)
    assert detected.language == "es" and detected.language_probability > 0.3
    assert "casa" in detected.text.lower()
    [translated] = base.translate(clip.path)
    assert "cat" in translated.text.lower() and "house" in translated.text.lower()


def test_errors_are_clear(llm, fox_clip):
    with pytest.raises(ValueError, match="cannot translate"):
        llm.translate(fox_clip.path)
    with pytest.raises(AudioDecodeError, match="empty"):
        llm.transcribe([b""])
    with pytest.raises(ValueError, match="task must be"):
        TranscriptionParams(task="summarize")
    with pytest.raises(ValueError, match="Unsupported language"):
        TranscriptionParams(language="klingon")
    with pytest.raises(ValueError, match="either params or keyword"):
        llm.transcribe([fox_clip.path], TranscriptionParams(), language="en")
