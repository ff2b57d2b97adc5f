"""Typed reads of multipart form fields: every failure is a 400 that names the field, never a 500.

`form_field` turns any parsing failure (a wrong type, a number that overflows, JSON nested too deep, a bad text
encoding) into that 400; the readers below use it and add messages of their own for the common mistakes."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Mapping

from vllm_whisper.entrypoints.openai.errors import OpenAIError, bad_request

# What parsing a client's value can raise: wrong types, overflowing numbers, JSON nested too deep, bad encodings.
FIELD_PARSE_ERRORS = (ValueError, TypeError, OverflowError, RecursionError, UnicodeError, KeyError, AttributeError)
TRUE_VALUES, FALSE_VALUES = ("true", "1"), ("false", "0")


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


def read_text(form: Mapping[str, Any], name: str) -> str | None:
    """The field's text, stripped; None when absent."""
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a text field, not a file", name)
    with form_field(name):
        value.encode("utf-8")  # lone surrogates and other unencodable text fail here, not in the engine
    return value.strip()


def read_float(form: Mapping[str, Any], name: str, default: float) -> float:
    value = read_text(form, name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise bad_request(f"{name} must be a number, got {value[:100]!r}", name) from None
    if not math.isfinite(number):
        raise bad_request(f"{name} must be a finite number, got {value[:100]!r}", name)
    return number


def read_int(form: Mapping[str, Any], name: str) -> int | None:
    """An integer field (a float with an integral value, as some clients send 5.0, is accepted); None when absent."""
    value = read_text(form, name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise bad_request(f"{name} must be an integer, got {value[:100]!r}", name)
    return int(number)


def read_optional_bool(form: Mapping[str, Any], name: str) -> bool | None:
    value = read_text(form, name)
    if not value:
        return None
    lowered = value.lower()
    if lowered not in TRUE_VALUES + FALSE_VALUES:
        raise bad_request(f"{name} must be true or false, got {value[:100]!r}", name)
    return lowered in TRUE_VALUES


def read_bool(form: Mapping[str, Any], name: str, default: bool) -> bool:
    value = read_optional_bool(form, name)
    return default if value is None else value
