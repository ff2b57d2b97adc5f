"""The multipart form of /v1/audio/transcriptions and /v1/audio/translations, as OpenAI's and vLLM's clients send
it, converted into one TranscriptionParams. Unknown fields are ignored, but vLLM's fields are honoured or refused
(vllm_fields.py); a bad value is a 400 naming its field.

Every field is read through `form_field` (form_values.py), which turns any parsing failure (a wrong type, a number
that overflows, JSON nested too deep, a bad text encoding) into that 400, so no input reaches the catch-all 500."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from vllm_whisper.entrypoints.openai.errors import bad_request
from vllm_whisper.entrypoints.openai.form_values import (
    FIELD_PARSE_ERRORS, form_field, read_bool, read_float, read_optional_bool, read_text,
)
from vllm_whisper.entrypoints.openai.vllm_fields import VllmFields, merge_xargs, parse_vllm_fields, vad_options
from vllm_whisper.languages import normalize_language
from vllm_whisper.outputs.formats import RESPONSE_FORMATS
from vllm_whisper.params import TranscriptionParams, fallback_temperatures

TIMESTAMP_GRANULARITIES = ("segment", "word")
STREAMABLE_FORMATS = ("json", "text", "srt", "vtt")
MAX_SILENCE_DURATION_MS = 10_000
PARAMS_FIELDS = frozenset(f.name for f in dataclasses.fields(TranscriptionParams))


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
    vllm: VllmFields = field(default_factory=VllmFields)  # vLLM's sampling fields, hotwords, to_language
    vad: dict[str, Any] = field(default_factory=dict)  # vLLM's vad_config.* fields
    xargs_options: dict[str, Any] = field(default_factory=dict)  # TranscriptionParams options from vllm_xargs

    def to_params(self, task: str, max_new_tokens: int) -> TranscriptionParams:
        """The options object the engine runs with (max_new_tokens: the server's most tokens per window)."""
        self.vllm.check_to_language(task, self.language)
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
        options.update(self.vad)
        options.update(self.vllm.options)
        doubled = sorted(set(self.xargs_options) & set(self.vllm.options))
        if doubled:
            raise bad_request(f"vllm_xargs sets {doubled[0]} that another field already decides; send it once",
                              f"vllm_xargs.{doubled[0]}")
        options.update(self.xargs_options)
        options["max_new_tokens"] = min(options["max_new_tokens"], max_new_tokens)  # the server's window limit
        try:
            return TranscriptionParams(**options)
        except (ValueError, TypeError) as exc:  # the message starts with the option's name
            name = str(exc).split(" ", 1)[0]
            raise bad_request(str(exc), name if name in PARAMS_FIELDS else None) from exc


def parse_form(form: Mapping[str, Any], getlist) -> TranscriptionRequest:
    """Validate the non-file fields of the upload form (`getlist(name)` returns every value of a field)."""
    with form_field("form"):
        return _parse_form(form, getlist)


def _parse_form(sent: Mapping[str, Any], getlist) -> TranscriptionRequest:
    form, xargs_options = merge_xargs(sent)  # vllm_xargs' keys read like the form fields of the same names
    response_format = read_text(form, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise bad_request(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}; got {response_format!r}",
                          "response_format")
    language = read_text(form, "language")
    if language:
        try:
            language = normalize_language(language)
        except ValueError as exc:
            raise bad_request(str(exc), "language", "invalid_language") from exc
    temperature = read_float(form, "temperature", 0.0)
    if not 0.0 <= temperature <= 1.0:
        raise bad_request(f"temperature must be between 0 and 1, got {temperature}", "temperature")
    granularities = tuple(getlist("timestamp_granularities[]") or getlist("timestamp_granularities")) or ("segment",)
    for granularity in granularities:
        if granularity not in TIMESTAMP_GRANULARITIES:
            raise bad_request(f"timestamp_granularities must be 'segment' and/or 'word', got {str(granularity)[:50]!r}",
                              "timestamp_granularities")
    if granularities != ("segment",) and response_format != "verbose_json":
        raise bad_request("timestamp_granularities needs response_format=verbose_json", "timestamp_granularities")
    stream = read_bool(form, "stream", False)
    if stream and response_format not in STREAMABLE_FORMATS:
        raise bad_request(f"stream=true supports response_format {', '.join(STREAMABLE_FORMATS)}, "
                          f"not {response_format!r}", "stream")
    include = tuple(getlist("include[]") or getlist("include"))
    vllm = parse_vllm_fields(form, stream)
    return TranscriptionRequest(
        model=read_text(form, "model"), response_format=response_format, language=language or None,
        prompt=read_text(form, "prompt"), temperature=temperature, timestamp_granularities=granularities,
        stream=stream, stream_include_usage=read_optional_bool(form, "stream_include_usage"), include=include,
        stream_continuous_usage_stats=read_bool(form, "stream_continuous_usage_stats", False),
        chunking_strategy=_chunking(form), vllm=vllm, vad=vad_options(form), xargs_options=xargs_options,
    )


def _chunking(form: Mapping[str, Any]) -> dict[str, Any] | None:
    """OpenAI's chunking_strategy: unset (one pass over the file), "auto", or a server_vad object, sent as JSON
    or as bracketed fields (chunking_strategy[type]=server_vad, ...) the way openai-python flattens it."""
    raw = read_text(form, "chunking_strategy")
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
