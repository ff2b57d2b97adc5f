"""Every response format of OpenAI's audio API (json, text, srt, vtt, verbose_json) plus openai-whisper's tsv,
rendered from one TranscriptionResult, so the server and the CLI write byte-identical outputs.

Media types follow what api.openai.com sends for whisper-1: `application/json` for json and verbose_json, and
`text/plain; charset=utf-8` for the plain-text formats text, srt and vtt alike, not text/vtt or
application/x-subrip (curl -i of a whisper-1 srt request, 2025-09, in
https://github.com/morioka/tiny-openai-whisper-api/issues/7; OpenAI's spec lists only these two types,
openai/openai-openapi#361). tsv is not an OpenAI format; it is plain text too, so clients that only know OpenAI's
two media types still read it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, TextIO, Union

from vllm_whisper.languages import LANGUAGES, normalize_language
from vllm_whisper.outputs.subtitles import to_srt, to_vtt
from vllm_whisper.params import TASKS
from vllm_whisper.transcribe.result import Segment, TranscriptionResult, Word

RESPONSE_FORMATS: tuple[str, ...] = ("json", "text", "srt", "verbose_json", "vtt", "tsv")
TIMESTAMP_GRANULARITIES: tuple[str, ...] = ("segment", "word")

JSON_MEDIA_TYPE = "application/json"
TEXT_MEDIA_TYPE = "text/plain; charset=utf-8"
MEDIA_TYPES: dict[str, str] = {
    "json": JSON_MEDIA_TYPE,
    "verbose_json": JSON_MEDIA_TYPE,
    "text": TEXT_MEDIA_TYPE,
    "srt": TEXT_MEDIA_TYPE,
    "vtt": TEXT_MEDIA_TYPE,
    "tsv": TEXT_MEDIA_TYPE,
}

TIME_DECIMALS = 3  # millisecond precision, as the subtitle formats carry
STAT_DECIMALS = 4  # log-probabilities, ratios and probabilities

PathOrFile = Union[str, "os.PathLike[str]", TextIO]


# --- small helpers --------------------------------------------------------------------------------
def _round(value: float, decimals: int) -> float | None:
    """Round for display; NaN or infinity (an unknown statistic) becomes None, since JSON has no NaN."""
    value = float(value)
    return round(value, decimals) if math.isfinite(value) else None


def language_name(language: str) -> str:
    """The lower-case English name OpenAI reports ("en" -> "english"); an unknown code is passed through lower-cased
    rather than failing a finished transcription."""
    try:
        return LANGUAGES[normalize_language(language)]
    except ValueError:
        return language.strip().lower()


def usage(result: TranscriptionResult) -> dict[str, Any]:
    """OpenAI's duration-billed usage block: whole seconds of input audio, rounded up."""
    return {"type": "duration", "seconds": math.ceil(round(result.duration, TIME_DECIMALS))}


def has_word_timings(result: TranscriptionResult) -> bool:
    """True when every segment was timed word by word (vacuously true for an empty result)."""
    return all(segment.words is not None for segment in result.segments)


def parse_granularities(timestamp_granularities: Iterable[str] | str) -> tuple[bool, bool]:
    """(include_segments, include_words) from OpenAI's timestamp_granularities[]; empty means the default, segment."""
    if isinstance(timestamp_granularities, str):
        timestamp_granularities = (timestamp_granularities,)
    chosen = set(timestamp_granularities) or {"segment"}
    unknown = sorted(chosen - set(TIMESTAMP_GRANULARITIES))
    if unknown:
        raise ValueError(f"unknown timestamp granularity {unknown[0]!r}; use one or both of "
                         f"{', '.join(TIMESTAMP_GRANULARITIES)}")
    return "segment" in chosen, "word" in chosen


# --- the formats ----------------------------------------------------------------------------------
def to_json(result: TranscriptionResult, task: str = "transcribe") -> dict[str, Any]:
    """OpenAI's `json` format: the text and, for transcriptions, the usage block. A translation is `{"text"}` alone,
    as both OpenAI's and vLLM's translation responses are."""
    if task == "translate":
        return {"text": result.text}
    return {"text": result.text, "usage": usage(result)}


def to_text(result: TranscriptionResult) -> str:
    """OpenAI's `text` format: the transcript and a trailing newline."""
    return result.text + "\n"


def segment_dict(segment: Segment) -> dict[str, Any]:
    """One verbose_json segment; tokens are the ids the segment holds (text and timestamp tokens)."""
    return {
        "id": segment.id,
        "seek": segment.seek,
        "start": _round(segment.start, TIME_DECIMALS),
        "end": _round(segment.end, TIME_DECIMALS),
        "text": segment.text,
        "tokens": [int(t) for t in segment.tokens],
        "temperature": _round(segment.temperature, 2),
        "avg_logprob": _round(segment.avg_logprob, STAT_DECIMALS),
        "compression_ratio": _round(segment.compression_ratio, STAT_DECIMALS),
        "no_speech_prob": _round(segment.no_speech_prob, STAT_DECIMALS),
    }


def word_dict(word: Word) -> dict[str, Any]:
    """One verbose_json word: its stripped text and time span (OpenAI reports no probability)."""
    return {"word": word.word.strip(), "start": _round(word.start, TIME_DECIMALS),
            "end": _round(word.end, TIME_DECIMALS)}


def to_verbose_json(result: TranscriptionResult, task: str = "transcribe", include_segments: bool = True,
                    include_words: bool = False) -> dict[str, Any]:
    """OpenAI's `verbose_json`: task, language name, duration, text, then segments and / or top-level words.

    Words appear only when asked for and the result was timed word by word; segments are left out when only
    word granularity was asked for, as OpenAI does.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    body: dict[str, Any] = {
        "task": task,
        "language": language_name(result.language),
        "duration": _round(result.duration, TIME_DECIMALS),
        "text": result.text,
    }
    if include_segments:
        body["segments"] = [segment_dict(s) for s in result.segments]
    if include_words and has_word_timings(result):
        body["words"] = [word_dict(w) for s in result.segments for w in s.words or []]
    body["usage"] = usage(result)
    return body


def to_tsv(result: TranscriptionResult) -> str:
    """openai-whisper's tsv: a `start\\tend\\ttext` header, then integer milliseconds and the stripped text."""
    lines = ["start\tend\ttext"]
    for segment in result.segments:
        text = segment.text.strip().replace("\t", " ")
        lines.append(f"{round(1000 * segment.start)}\t{round(1000 * segment.end)}\t{text}")
    return "\n".join(lines) + "\n"


# --- dispatch -------------------------------------------------------------------------------------
def check_format(response_format: str) -> str:
    """Return the format if known, else raise a ValueError that lists the valid ones."""
    if response_format not in RESPONSE_FORMATS:
        raise ValueError(f"unknown response_format {response_format!r}; use one of {', '.join(RESPONSE_FORMATS)}")
    return response_format


def render(result: TranscriptionResult, response_format: str, task: str = "transcribe",
           timestamp_granularities: Iterable[str] | str = ("segment",)) -> tuple[str | dict, str]:
    """(body, media type) of one result in a response format; granularities only shape verbose_json."""
    fmt = check_format(response_format)
    media_type = MEDIA_TYPES[fmt]
    if fmt == "json":
        return to_json(result, task), media_type
    if fmt == "verbose_json":
        segments, words = parse_granularities(timestamp_granularities)
        return to_verbose_json(result, task, segments, words), media_type
    if fmt == "text":
        return to_text(result), media_type
    if fmt == "srt":
        return to_srt(result.segments), media_type
    if fmt == "vtt":
        return to_vtt(result.segments), media_type
    return to_tsv(result), media_type


def render_text(result: TranscriptionResult, response_format: str, task: str = "transcribe",
                timestamp_granularities: Iterable[str] | str = ("segment",)) -> str:
    """The rendered body as a string: JSON formats pretty-printed with non-ASCII kept, for files and terminals."""
    body, _ = render(result, response_format, task, timestamp_granularities)
    if isinstance(body, dict):
        return json.dumps(body, indent=2, ensure_ascii=False) + "\n"
    return body


def write_result(result: TranscriptionResult, response_format: str, path_or_file: PathOrFile,
                 task: str = "transcribe", timestamp_granularities: Iterable[str] | str = ("segment",)) -> None:
    """Write one result to a path (UTF-8) or an open text file, in the given format (the CLI's writer)."""
    text = render_text(result, response_format, task, timestamp_granularities)
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    elif hasattr(path_or_file, "write"):
        path_or_file.write(text)
    else:
        raise TypeError(f"write_result needs a path or a text file, got {type(path_or_file).__name__}")
