"""The multipart form of /v1/audio/transcriptions and /v1/audio/translations, as OpenAI's clients send it,
converted into one TranscriptionParams. Unknown fields are ignored; a bad value is a 400 naming its field.

Every field is read through `form_field`, which turns any parsing failure (a wrong type, a number that overflows,
JSON nested too deep, a bad text encoding) into that 400, so no input reaches the catch-all 500."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Mapping

from vllm_whisper.entrypoints.openai.errors import OpenAIError, bad_request
from vllm_whisper.languages import normalize_language
from vllm_whisper.outputs.formats import RESPONSE_FORMATS
from vllm_whisper.params import TranscriptionParams, fallback_temperatures

TIMESTAMP_GRANULARITIES = ("segment", "word")
STREAMABLE_FORMATS = ("json", "text", "srt", "vtt")
MAX_SILENCE_DURATION_MS = 10_000
# What parsing a client's value can raise: wrong types, overflowing numbers, JSON nested too deep, bad encodings.
FIELD_PARSE_ERRORS = (ValueError, TypeError, OverflowError, RecursionError, UnicodeError, KeyError, AttributeError)


@contextmanager
def form_field(name: str):
    """Map any failure while parsing the field `name` to a 400 that names it."""
    try:
        yield
    except OpenAIError:
        raise
    except FIELD_PARSE_ERRORS as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise bad_request(f"{name} has an invalid value ({reason})", name) from None


@dataclass
class TranscriptionRequest:
    """The form fields that matter, validated."""

    model: str | None
    response_format: str = "json"
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    timestamp_granularities: tuple[str, ...] = ("segment",)
    stream: bool = False
    stream_include_usage: bool | None = None
    stream_continuous_usage_stats: bool = False
    include: tuple[str, ...] = ()
    chunking_strategy: dict[str, Any] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_params(self, task: str, max_new_tokens: int) -> TranscriptionParams:
        """The options object the engine runs with."""
        chunking = self.chunking_strategy or {}
        options: dict[str, Any] = dict(
            task=task, language=self.language, initial_prompt=self.prompt or None,
            temperature=fallback_temperatures(self.temperature), max_new_tokens=max_new_tokens,
            word_timestamps="word" in self.timestamp_granularities,
        )
        if chunking:
            options.update(chunking_strategy="parallel", vad_filter=True)
            with form_field("chunking_strategy"):
                if "threshold" in chunking:
                    options["vad_threshold"] = float(chunking["threshold"])
                if "silence_duration_ms" in chunking:
                    options["vad_min_silence_ms"] = round(float(chunking["silence_duration_ms"]))
        try:
            return TranscriptionParams(**options)
        except ValueError as exc:
            raise bad_request(str(exc)) from exc


def parse_form(form: Mapping[str, Any], getlist) -> TranscriptionRequest:
    """Validate the non-file fields of the upload form (`getlist(name)` returns every value of a field)."""
    with form_field("form"):
        return _parse_form(form, getlist)


def _parse_form(form: Mapping[str, Any], getlist) -> TranscriptionRequest:
    response_format = _text(form, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise bad_request(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}; got {response_format!r}",
                          "response_format")
    language = _text(form, "language")
    if language:
        try:
            language = normalize_language(language)
        except ValueError as exc:
            raise bad_request(str(exc), "language", "invalid_language") from exc
    temperature = _float(form, "temperature", 0.0)
    if not 0.0 <= temperature <= 1.0:
        raise bad_request(f"temperature must be between 0 and 1, got {temperature}", "temperature")
    granularities = tuple(getlist("timestamp_granularities[]") or getlist("timestamp_granularities")) or ("segment",)
    for granularity in granularities:
        if granularity not in TIMESTAMP_GRANULARITIES:
            raise bad_request(f"timestamp_granularities must be 'segment' and/or 'word', got {str(granularity)[:50]!r}",
                              "timestamp_granularities")
    if granularities != ("segment",) and response_format != "verbose_json":
        raise bad_request("timestamp_granularities needs response_format=verbose_json", "timestamp_granularities")
    stream = _bool(form, "stream", False)
    if stream and response_format not in STREAMABLE_FORMATS:
        raise bad_request(f"stream=true supports response_format {', '.join(STREAMABLE_FORMATS)}, "
                          f"not {response_format!r}", "stream")
    include = tuple(getlist("include[]") or getlist("include"))
    return TranscriptionRequest(
        model=_text(form, "model"), response_format=response_format, language=language or None,
        prompt=_text(form, "prompt"), temperature=temperature, timestamp_granularities=granularities,
        stream=stream, stream_include_usage=_optional_bool(form, "stream_include_usage"), include=include,
        stream_continuous_usage_stats=_bool(form, "stream_continuous_usage_stats", False),
        chunking_strategy=_chunking(form),
    )


def _text(form: Mapping[str, Any], name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a text field, not a file", name)
    with form_field(name):
        value.encode("utf-8")  # lone surrogates and other unencodable text fail here, not in the engine
    return value.strip()


def _float(form: Mapping[str, Any], name: str, default: float) -> float:
    value = _text(form, name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise bad_request(f"{name} must be a number, got {value[:100]!r}", name) from None


def _optional_bool(form: Mapping[str, Any], name: str) -> bool | None:
    value = _text(form, name)
    if not value:
        return None
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0"):
        raise bad_request(f"{name} must be true or false, got {value!r}", name)
    return lowered in ("true", "1")


def _bool(form: Mapping[str, Any], name: str, default: bool) -> bool:
    value = _optional_bool(form, name)
    return default if value is None else value


def _chunking(form: Mapping[str, Any]) -> dict[str, Any] | None:
    """OpenAI's chunking_strategy: unset (one pass over the file), "auto", or a server_vad object, sent as JSON
    or as bracketed fields (chunking_strategy[type]=server_vad, ...) the way openai-python flattens it."""
    raw = _text(form, "chunking_strategy")
    bracketed = {key[len("chunking_strategy["):-1]: value for key, value in form.items()
                 if key.startswith("chunking_strategy[") and key.endswith("]")}
    if raw is None and not bracketed:
        return None
    if raw == "auto":
        return {"type": "auto"}
    try:
        strategy = json.loads(raw) if raw else bracketed
    except (json.JSONDecodeError, RecursionError):
        raise bad_request('chunking_strategy must be "auto" or a server_vad object', "chunking_strategy") from None
    if not isinstance(strategy, dict) or strategy.get("type") not in ("auto", "server_vad"):
        raise bad_request('chunking_strategy must be "auto" or {"type": "server_vad", ...}', "chunking_strategy")
    try:
        if "threshold" in strategy and not 0.0 < float(strategy["threshold"]) < 1.0:
            raise ValueError
        if "silence_duration_ms" in strategy:
            silence = float(strategy["silence_duration_ms"])
            if not 0 <= silence <= MAX_SILENCE_DURATION_MS:
                raise ValueError
    except FIELD_PARSE_ERRORS:
        raise bad_request(f"chunking_strategy: threshold must be in (0, 1) and silence_duration_ms from 0 to "
                          f"{MAX_SILENCE_DURATION_MS}", "chunking_strategy") from None
    return strategy
