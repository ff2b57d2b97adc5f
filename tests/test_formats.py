"""Golden tests for every response format, the verbose_json shape, the dispatcher and the file writer."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest

from vllm_whisper.outputs import (
    MEDIA_TYPES,
    RESPONSE_FORMATS,
    render,
    to_json,
    to_text,
    to_tsv,
    to_verbose_json,
    write_result,
)
from vllm_whisper.outputs.formats import language_name
from vllm_whisper.transcribe.result import Segment, TranscriptionResult, Word

SEGMENTS = [
    Segment(0, 0, 0.0, 2.96, " Größe matters.", [50363, 9410, 12, 50511], 0.0, -0.1234567, 0.8571428, 0.0123456,
            [Word(" Größe", 0.0, 1.2, 0.91), Word(" matters.", 1.2, 2.96, 0.82)]),
    Segment(1, 0, 3.5, 61.0041, " 日本語のテキスト。", [50538, 4110, 50713], 0.2, -0.5, 1.0, 0.25,
            [Word(" 日本語のテキスト。", 3.5, 61.0041, 0.7)]),
    Segment(2, 372000, 3725.25, 3726.5, " Over an hour\tin.", [50363, 6652, 50425], 0.0, -0.25, 1.5, 0.0001,
            [Word(" Over", 3725.25, 3725.6, 0.9), Word(" an", 3725.6, 3725.8, 0.9),
             Word(" hour\tin.", 3725.8, 3726.5, 0.9)]),
]
TEXT = "Größe matters. 日本語のテキスト。 Over an hour\tin."
RESULT = TranscriptionResult(TEXT, "en", 3727.0004, SEGMENTS, 0.99)
EMPTY = TranscriptionResult("", "en", 2.5, [])

SRT = (
    "1\n00:00:00,000 --> 00:00:02,960\nGröße matters.\n\n"
    "2\n00:00:03,500 --> 00:01:01,004\n日本語のテキスト。\n\n"
    "3\n01:02:05,250 --> 01:02:06,500\nOver an hour\tin.\n\n"
)
VTT = (
    "WEBVTT\n\n"
    "00:00:00.000 --> 00:00:02.960\nGröße matters.\n\n"
    "00:00:03.500 --> 00:01:01.004\n日本語のテキスト。\n\n"
    "01:02:05.250 --> 01:02:06.500\nOver an hour\tin.\n\n"
)
TSV = (
    "start\tend\ttext\n"
    "0\t2960\tGröße matters.\n"
    "3500\t61004\t日本語のテキスト。\n"
    "3725250\t3726500\tOver an hour in.\n"
)
SEGMENT_DICTS = [
    {"id": 0, "seek": 0, "start": 0.0, "end": 2.96, "text": " Größe matters.", "tokens": [50363, 9410, 12, 50511],
     "temperature": 0.0, "avg_logprob": -0.1235, "compression_ratio": 0.8571, "no_speech_prob": 0.0123},
    {"id": 1, "seek": 0, "start": 3.5, "end": 61.004, "text": " 日本語のテキスト。", "tokens": [50538, 4110, 50713],
     "temperature": 0.2, "avg_logprob": -0.5, "compression_ratio": 1.0, "no_speech_prob": 0.25},
    {"id": 2, "seek": 372000, "start": 3725.25, "end": 3726.5, "text": " Over an hour\tin.",
     "tokens": [50363, 6652, 50425], "temperature": 0.0, "avg_logprob": -0.25, "compression_ratio": 1.5,
     "no_speech_prob": 0.0001},
]
WORD_DICTS = [
    {"word": "Größe", "start": 0.0, "end": 1.2},
    {"word": "matters.", "start": 1.2, "end": 2.96},
    {"word": "日本語のテキスト。", "start": 3.5, "end": 61.004},
    {"word": "Over", "start": 3725.25, "end": 3725.6},
    {"word": "an", "start": 3725.6, "end": 3725.8},
    {"word": "hour\tin.", "start": 3725.8, "end": 3726.5},
]
HEAD = {"task": "transcribe", "language": "english", "duration": 3727.0, "text": TEXT}


def test_usage_rounds_duration_up_to_whole_seconds():
    assert to_json(RESULT)["usage"] == {"type": "duration", "seconds": 3727}  # 3727.0004 is 3727.000 to the ms
    assert to_json(replace(RESULT, duration=8.47))["usage"] == {"type": "duration", "seconds": 9}
    assert to_json(replace(EMPTY, duration=0.0))["usage"]["seconds"] == 0


def test_json_golden():
    assert to_json(RESULT) == {"text": TEXT, "usage": {"type": "duration", "seconds": 3727}}


def test_text_golden():
    assert to_text(RESULT) == TEXT + "\n"


def test_tsv_golden_integer_ms_and_tabs_replaced():
    assert to_tsv(RESULT) == TSV


def test_verbose_json_segments_only():
    body = to_verbose_json(RESULT)
    assert list(body) == ["task", "language", "duration", "text", "segments", "usage"]
    assert body == {**HEAD, "segments": SEGMENT_DICTS, "usage": {"type": "duration", "seconds": 3727}}
    assert list(body["segments"][0]) == ["id", "seek", "start", "end", "text", "tokens", "temperature",
                                         "avg_logprob", "compression_ratio", "no_speech_prob"]


def test_verbose_json_with_words():
    body = to_verbose_json(RESULT, include_words=True)
    assert body == {**HEAD, "segments": SEGMENT_DICTS, "words": WORD_DICTS,
                    "usage": {"type": "duration", "seconds": 3727}}


def test_verbose_json_words_only_omits_segments():
    body = to_verbose_json(RESULT, include_segments=False, include_words=True)
    assert "segments" not in body and body["words"] == WORD_DICTS


def test_verbose_json_words_left_out_without_word_timings():
    untimed = replace(RESULT, segments=[replace(s, words=None) for s in SEGMENTS])
    body = to_verbose_json(untimed, include_words=True)
    assert "words" not in body and body["segments"] == SEGMENT_DICTS


def test_translation_json_is_text_alone():
    """A translation's json body is {"text"} as in OpenAI's and vLLM's translation responses; transcriptions keep
    their usage block."""
    body, media_type = render(RESULT, "json", task="translate")
    assert body == {"text": TEXT} and media_type == "application/json"
    assert set(render(RESULT, "json")[0]) == {"text", "usage"}


def test_verbose_json_translate_task_and_language_names():
    body = to_verbose_json(replace(RESULT, language="ja"), task="translate")
    assert body["task"] == "translate" and body["language"] == "japanese"
    assert language_name("EN") == "english" and language_name("Mandarin") == "chinese"
    assert language_name("xx") == "xx"
    with pytest.raises(ValueError, match="task must be one of transcribe, translate"):
        to_verbose_json(RESULT, task="summarise")


def test_verbose_json_unknown_statistic_is_null_not_nan():
    segment = replace(SEGMENTS[0], no_speech_prob=float("nan"))
    body = to_verbose_json(replace(RESULT, segments=[segment]))
    assert body["segments"][0]["no_speech_prob"] is None
    json.loads(json.dumps(body, allow_nan=False))


def test_empty_result():
    assert to_json(EMPTY) == {"text": "", "usage": {"type": "duration", "seconds": 3}}
    assert to_text(EMPTY) == "\n"
    assert render(EMPTY, "srt")[0] == ""
    assert render(EMPTY, "vtt")[0] == "WEBVTT\n\n"
    assert render(EMPTY, "tsv")[0] == "start\tend\ttext\n"
    body = to_verbose_json(EMPTY, include_words=True)
    assert body["segments"] == [] and body["words"] == [] and body["text"] == "" and body["duration"] == 2.5


def test_render_golden_every_format():
    expected = {
        "json": ({"text": TEXT, "usage": {"type": "duration", "seconds": 3727}}, "application/json"),
        "text": (TEXT + "\n", "text/plain; charset=utf-8"),
        "srt": (SRT, "text/plain; charset=utf-8"),
        "vtt": (VTT, "text/plain; charset=utf-8"),
        "tsv": (TSV, "text/plain; charset=utf-8"),
        "verbose_json": ({**HEAD, "segments": SEGMENT_DICTS, "usage": {"type": "duration", "seconds": 3727}},
                         "application/json"),
    }
    assert set(expected) == set(RESPONSE_FORMATS) == set(MEDIA_TYPES)
    for fmt, golden in expected.items():
        assert render(RESULT, fmt) == golden, fmt


def test_render_timestamp_granularities():
    usage = {"type": "duration", "seconds": 3727}
    assert render(RESULT, "verbose_json", timestamp_granularities=["word"])[0] == {
        **HEAD, "words": WORD_DICTS, "usage": usage}
    both = render(RESULT, "verbose_json", timestamp_granularities=("segment", "word"))[0]
    assert both["segments"] == SEGMENT_DICTS and both["words"] == WORD_DICTS
    assert "words" not in render(RESULT, "verbose_json", timestamp_granularities=())[0]
    assert "segments" not in render(RESULT, "verbose_json", timestamp_granularities="word")[0]
    assert render(RESULT, "json", timestamp_granularities=["word"])[0] == to_json(RESULT)  # verbose_json only
    with pytest.raises(ValueError, match="unknown timestamp granularity 'char'; use one or both of segment, word"):
        render(RESULT, "verbose_json", timestamp_granularities=["char"])


def test_render_unknown_format_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown response_format 'xml'; use one of json, text, srt, verbose_json, "
                                         "vtt, tsv"):
        render(RESULT, "xml")


def test_write_result_to_path_pretty_json_keeps_non_ascii(tmp_path):
    path = tmp_path / "out.json"
    write_result(RESULT, "verbose_json", path, timestamp_granularities=("segment", "word"))
    raw = path.read_text(encoding="utf-8")
    assert "Größe" in raw and "日本語" in raw and raw.startswith('{\n  "task": "transcribe",') and raw.endswith("}\n")
    assert json.loads(raw) == to_verbose_json(RESULT, include_words=True)
    write_result(RESULT, "json", str(path))
    assert path.read_text(encoding="utf-8") == (
        '{\n  "text": "Größe matters. 日本語のテキスト。 Over an hour\\tin.",\n'
        '  "usage": {\n    "type": "duration",\n    "seconds": 3727\n  }\n}\n'
    )


def test_write_result_to_file_objects_and_errors(tmp_path):
    for fmt, golden in (("srt", SRT), ("vtt", VTT), ("tsv", TSV), ("text", TEXT + "\n")):
        buffer = io.StringIO()
        write_result(RESULT, fmt, buffer)
        assert buffer.getvalue() == golden
        path = tmp_path / f"out.{fmt}"
        write_result(RESULT, fmt, path)
        assert path.read_bytes() == golden.encode("utf-8")
    with pytest.raises(ValueError, match="unknown response_format"):
        write_result(RESULT, "docx", io.StringIO())
    with pytest.raises(TypeError, match="needs a path or a text file"):
        write_result(RESULT, "text", 42)
