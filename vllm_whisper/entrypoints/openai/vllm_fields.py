"""vLLM's own fields of TranscriptionRequest / TranslationRequest (sampling, beam search, token limit, hotwords,
to_language, vllm_xargs), read from the multipart form into TranscriptionParams options.

Every field vLLM defines is either honoured or, when sent with a value we cannot honour, a 400 that names it:
a client written for vLLM never has a setting silently dropped. `vllm_xargs` (a JSON object, as vLLM's form
clients send it) may carry these fields and any TranscriptionParams option; unknown keys are a 400 naming them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from vllm_whisper.entrypoints.openai.errors import bad_request
from vllm_whisper.entrypoints.openai.form_values import (
    form_field, read_bool, read_float, read_int, read_optional_bool, read_text,
)
from vllm_whisper.languages import normalize_language
from vllm_whisper.params import PENALTY_RANGE, SEED_RANGE, TranscriptionParams

# vLLM's fields that this module reads (the form's OpenAI fields are protocol.py's).
SAMPLING_FIELDS = ("seed", "max_completion_tokens", "use_beam_search", "n", "length_penalty",
                   "include_stop_str_in_output", "top_p", "top_k", "min_p", "repetition_penalty",
                   "frequency_penalty", "presence_penalty", "hotwords", "to_language")
# vllm_xargs keys read like the form field of the same name (a key sent both ways is a 400).
XARGS_FORM_FIELDS = SAMPLING_FIELDS + ("temperature", "language", "prompt")
# TranscriptionParams options vllm_xargs may set directly: all but those the endpoint or a form field decides.
XARGS_PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(TranscriptionParams)
                           if f.name not in ("task", "temperature", "language", "initial_prompt")
                           and f.name not in XARGS_FORM_FIELDS)
# vLLM's flattened VAD options (vad_config.*): the ones with a TranscriptionParams counterpart.
VAD_FIELDS = {"vad_config.enabled": "vad_filter", "vad_config.threshold": "vad_threshold",
              "vad_config.min_silence_duration_ms": "vad_min_silence_ms"}
VLLM_DEFAULT_LENGTH_PENALTY = 1.0  # vLLM ranks beams by logprob / length ** length_penalty


@dataclass
class VllmFields:
    """vLLM's fields of one request, as TranscriptionParams options plus what the endpoint still has to check."""

    options: dict[str, Any] = field(default_factory=dict)
    to_language: str | None = None
    use_beam_search: bool = False

    def check_to_language(self, task: str, language: str | None) -> None:
        """Whisper writes English (translate) or the spoken language (transcribe); any other target is a 400."""
        target = self.to_language
        if target is None:
            return
        if task == "translate" and target != "en":
            raise bad_request(f"to_language must be English on /v1/audio/translations (Whisper translates to English "
                              f"only), got {target!r}", "to_language")
        if task == "transcribe" and target != language:
            raise bad_request("to_language on /v1/audio/transcriptions must equal language (Whisper transcribes in "
                              "the spoken language); to get English text, use /v1/audio/translations",
                              "to_language")


def merge_xargs(form: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The form's fields with vllm_xargs' form-like keys added (as text), and vllm_xargs' TranscriptionParams
    options (typed). Absent vllm_xargs: the form unchanged and no options."""
    fields = {key: value for key, value in form.items()}
    raw = read_text(form, "vllm_xargs")
    if not raw:
        return fields, {}
    try:
        xargs = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise bad_request(f"vllm_xargs must be a JSON object ({str(exc)[:100]})", "vllm_xargs") from None
    if not isinstance(xargs, dict):
        raise bad_request("vllm_xargs must be a JSON object of extra parameters", "vllm_xargs")
    options: dict[str, Any] = {}
    for key, value in xargs.items():
        name = f"vllm_xargs.{key}"
        if key == "temperature" and isinstance(value, list):  # the whole fallback schedule, e.g. [0.0, 0.5, 1.0]
            if "temperature" in form:
                raise bad_request("temperature is sent both as a form field and in vllm_xargs; send it once", name)
            options["temperature"] = _temperature_schedule(name, value)
        elif key in XARGS_FORM_FIELDS:
            if key in form:
                raise bad_request(f"{key} is sent both as a form field and in vllm_xargs; send it once", name)
            if value is not None:
                fields[key] = _as_form_text(name, value)
        elif key in XARGS_PARAM_FIELDS:
            options[key] = _typed_option(name, key, value)
        else:
            raise bad_request(f"vllm_xargs key {str(key)[:50]!r} is not an option this server honours; it takes "
                              f"{', '.join(XARGS_FORM_FIELDS + XARGS_PARAM_FIELDS)}", name)
    return fields, options


def _temperature_schedule(name: str, values: list) -> tuple[float, ...]:
    """vllm_xargs' temperature list: the fallback schedule itself ([0.0] alone: greedy, no hotter retries)."""
    if not values or len(values) > 16 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 and 0.0 <= v <= 1.0 for v in values):
        raise bad_request("vllm_xargs.temperature as a list is the fallback schedule: 1 to 16 numbers from 0 to 1",
                          name)
    return tuple(float(v) for v in values)


def parse_vllm_fields(form: Mapping[str, Any], stream: bool) -> VllmFields:
    """vLLM's fields of the form (vllm_xargs already merged in) as TranscriptionParams options."""
    options: dict[str, Any] = {}
    seed = read_int(form, "seed")
    if seed is not None:
        if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            raise bad_request(f"seed must fit in a 64-bit signed integer, got {seed}", "seed")
        options["seed"] = seed
    limit = read_int(form, "max_completion_tokens")
    if limit is not None:
        if limit < 1:
            raise bad_request(f"max_completion_tokens must be at least 1, got {limit}", "max_completion_tokens")
        options["max_completion_tokens"] = limit
    use_beam_search = _beam_search(form, stream, options)
    _sampling(form, options)
    hotwords = read_text(form, "hotwords")
    if hotwords:
        options["hotwords"] = hotwords
    to_language = read_text(form, "to_language")
    if to_language:
        try:
            to_language = normalize_language(to_language)
        except ValueError as exc:
            raise bad_request(str(exc), "to_language", "invalid_language") from None
    _refuse_unsupported(form)
    return VllmFields(options, to_language or None, use_beam_search)


def _beam_search(form: Mapping[str, Any], stream: bool, options: dict[str, Any]) -> bool:
    """use_beam_search with n beams (n=1: greedy) through the engine's beam search; n > 1 without it would ask
    for several transcripts, which the response cannot carry."""
    use_beam_search = read_bool(form, "use_beam_search", False)
    length_penalty = read_float(form, "length_penalty", VLLM_DEFAULT_LENGTH_PENALTY)  # no effect without beams
    n = read_int(form, "n")
    if n is not None and n < 1:
        raise bad_request(f"n must be at least 1, got {n}", "n")
    if not use_beam_search:
        if n not in (None, 1):
            raise bad_request("n > 1 without use_beam_search asks for several transcripts; this server returns one. "
                              "Send use_beam_search=true to decode with n beams.", "n")
        return False
    if stream:
        raise bad_request("use_beam_search cannot be combined with stream=true (beam search decides the text at "
                          "the end of each window)", "use_beam_search")
    if length_penalty != VLLM_DEFAULT_LENGTH_PENALTY:
        raise bad_request("length_penalty other than 1.0 is not supported: beams are ranked by log-probability / "
                          "length, which is vLLM's length_penalty=1.0", "length_penalty")
    options["beam_size"] = n or 1
    return True


def _sampling(form: Mapping[str, Any], options: dict[str, Any]) -> None:
    """top_p / top_k / min_p (when a window samples) and the three penalties, in vLLM's ranges."""
    top_p = read_float(form, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise bad_request(f"top_p must be in (0, 1], got {top_p}", "top_p")
    top_k = read_int(form, "top_k")
    if top_k is not None and top_k < -1:
        raise bad_request(f"top_k must be -1 or 0 (all tokens) or positive, got {top_k}", "top_k")
    min_p = read_float(form, "min_p", 0.0)
    if not 0.0 <= min_p <= 1.0:
        raise bad_request(f"min_p must be in [0, 1], got {min_p}", "min_p")
    repetition = read_float(form, "repetition_penalty", 1.0)
    if not repetition > 0.0:
        raise bad_request(f"repetition_penalty must be greater than 0, got {repetition}", "repetition_penalty")
    options.update(top_p=top_p, top_k=max(top_k or 0, 0), min_p=min_p, repetition_penalty=repetition)
    for name in ("frequency_penalty", "presence_penalty"):
        value = read_float(form, name, 0.0)
        if not PENALTY_RANGE[0] <= value <= PENALTY_RANGE[1]:
            raise bad_request(f"{name} must be between -2 and 2, got {value}", name)
        options[name] = value
    read_optional_bool(form, "include_stop_str_in_output")  # no stop strings in transcription: nothing to include


def _refuse_unsupported(form: Mapping[str, Any]) -> None:
    """vLLM fields whose sent value we cannot honour."""
    for key in form:
        if key.startswith("vad_config.") and key not in VAD_FIELDS:
            raise bad_request(f"{key} is not supported; the VAD options are "
                              f"{', '.join(VAD_FIELDS)}", key)


def vad_options(form: Mapping[str, Any]) -> dict[str, Any]:
    """vLLM's vad_config.enabled / threshold / min_silence_duration_ms as TranscriptionParams options."""
    options: dict[str, Any] = {}
    enabled = read_optional_bool(form, "vad_config.enabled")
    if enabled is not None:
        options["vad_filter"] = enabled
    threshold = read_text(form, "vad_config.threshold")
    if threshold:
        options["vad_threshold"] = read_float(form, "vad_config.threshold", 0.5)
        if not 0.0 < options["vad_threshold"] < 1.0:
            raise bad_request(f"vad_config.threshold must be between 0 and 1, got {threshold[:50]}",
                              "vad_config.threshold")
    silence = read_int(form, "vad_config.min_silence_duration_ms")
    if silence is not None:
        if not 0 <= silence <= 10_000:
            raise bad_request(f"vad_config.min_silence_duration_ms must be from 0 to 10000, got {silence}",
                              "vad_config.min_silence_duration_ms")
        options["vad_min_silence_ms"] = silence
    return options


def _as_form_text(name: str, value: Any) -> str:
    """A JSON value of vllm_xargs as the text a form field would carry."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise bad_request(f"{name} must be a string, number or boolean", name)


def _typed_option(name: str, key: str, value: Any) -> Any:
    """A vllm_xargs value for the TranscriptionParams option `key`, checked against the option's type."""
    annotation = {f.name: str(f.type) for f in dataclasses.fields(TranscriptionParams)}[key]
    optional = annotation.endswith("| None")
    if value is None:
        if not optional:
            raise bad_request(f"{name} cannot be null", name)
        return None
    with form_field(name):
        if annotation.startswith("bool"):
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if annotation.startswith("int"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("expected an integer")
            return value
        if annotation.startswith("float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError("expected a finite number")
            return float(value)
        if annotation.startswith("str"):
            if not isinstance(value, str):
                raise ValueError("expected a string")
            return value
        if annotation.startswith("tuple[int"):
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError("expected a list of integers")
            return tuple(value)
    raise bad_request(f"{name} cannot be set through vllm_xargs", name)

