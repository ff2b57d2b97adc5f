"""The `transcribe` subcommand's transcription flags, generated from TranscriptionParams' dataclass fields.

Every field is a flag (`seed` -> --seed), so an option added to TranscriptionParams appears on the command line
without touching the CLI: the flag's type and default come from the field, its help from the field's entry in
the class docstring. Mapping by type:

- bool: --x / --no-x (BooleanOptionalAction), so --no-timestamps and --no-condition-on-previous-text work;
- int, float, str: one value; for an Optional field the word `none` passes None (e.g. --logprob-threshold none);
- tuple[T, ...]: one or more values (nargs); Optional tuples also take none (--suppress-tokens with no values is
  the empty tuple);
- Literal[...]: one of its values.

Two fields keep their historical CLI meaning: --temperature X with one value gives the fallback schedule from X
(X, X+0.2, ... 1.0), several values are the schedule itself; --max-new-tokens defaults to the engine's budget,
min(224, max-model-len / 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, Callable

from vllm_whisper.params import CHUNKING_STRATEGIES, TASKS, TranscriptionParams, fallback_temperatures

CHOICES: dict[str, tuple[str, ...]] = {"task": TASKS, "chunking_strategy": CHUNKING_STRATEGIES}
ENGINE_DEFAULTED = {"max_new_tokens": "min(224, max-model-len / 2)"}  # filled in from the engine's config
NONE_WORD = "none"


@dataclasses.dataclass(frozen=True)
class FlagType:
    """What a field's annotation means on the command line."""

    base: Any  # int, float, str, bool, or a tuple of Literal choices
    optional: bool  # None is allowed
    sequence: bool  # tuple[T, ...] or list[T]


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_params_arguments(parser: argparse.ArgumentParser, options: type = TranscriptionParams) -> None:
    """Add one flag per field of the options dataclass (TranscriptionParams) to `parser` (dest = field name)."""
    group = parser.add_argument_group(
        "transcription options", f"{options.__name__} ({options.__module__}): one flag per field")
    hints = typing.get_type_hints(options)
    docs = field_docs(options)
    for field in dataclasses.fields(options):
        kind = flag_type(field.name, hints[field.name])
        default = _field_default(field)
        help_text = docs.get(field.name, f"{options.__name__}.{field.name}").replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": field.name, "help": help_text}
        if field.name in ENGINE_DEFAULTED:
            kwargs["help"] += f" (default: {ENGINE_DEFAULTED[field.name]})"
            default = None
        if field.name == "temperature":
            kwargs["help"] = (kwargs["help"].rstrip(".") + ". On the command line one value X gives the schedule X, "
                              "X+0.2, ... 1.0; several values are the schedule itself")
        if kind.base is bool and not kind.sequence:
            group.add_argument(flag_name(field.name), action=argparse.BooleanOptionalAction, default=default,
                               **kwargs)
            continue
        convert = _converter(kind)
        if kind.sequence:
            kwargs["nargs"] = "*" if kind.optional else "+"
        group.add_argument(flag_name(field.name), type=convert, default=default, metavar=_metavar(kind), **kwargs)


def params_from_cli_args(args: argparse.Namespace, max_new_tokens: int) -> TranscriptionParams:
    """The TranscriptionParams of a parsed namespace; max_new_tokens is the engine's budget, used unless the
    flag was given. Raises ValueError (from TranscriptionParams' checks) with a message naming the option."""
    hints = typing.get_type_hints(TranscriptionParams)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(TranscriptionParams):
        value = getattr(args, field.name, _field_default(field))
        if flag_type(field.name, hints[field.name]).sequence and isinstance(value, list):
            value = None if None in value else tuple(value)  # `--suppress-tokens none`: the field's None
        values[field.name] = value
    if values.get("max_new_tokens") is None:
        values["max_new_tokens"] = max_new_tokens
    temperature = values.get("temperature")
    if isinstance(temperature, tuple) and len(temperature) == 1:
        values["temperature"] = fallback_temperatures(temperature[0])
    return TranscriptionParams(**values)


def flag_type(name: str, annotation: Any) -> FlagType:
    """Unwrap Optional[...] and tuple[T, ...] / list[T]; Literal[...] and CHOICES become a tuple of choices."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            raise TypeError(f"option {name}: a union of {members} has no command-line form; "
                            "use one type (optionally | None)")
        annotation = members[0]
        origin = typing.get_origin(annotation)
    sequence = origin in (tuple, list)
    if sequence:
        annotation = typing.get_args(annotation)[0]
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        base: Any = tuple(typing.get_args(annotation))
    elif name in CHOICES:
        base = CHOICES[name]
    elif annotation in (int, float, str, bool):
        base = annotation
    else:
        raise TypeError(f"option {name}: type {annotation!r} has no command-line form; use int, "
                        "float, str, bool, a Literal, a tuple of one of them, or one of them | None")
    return FlagType(base, optional, sequence)


def field_docs(cls: type) -> dict[str, str]:
    """Each field's text from the class docstring's `name: text` entries (`a / b: text` documents both). A field
    only mentioned inside another's entry (e.g. vad_threshold in vad_filter's) gets that entry's text."""
    docs: dict[str, str] = {}
    current: list[str] = []
    for line in (inspect.getdoc(cls) or "").splitlines():
        entry = re.match(r"^([a-z_][a-z0-9_]*(?:\s*/\s*[a-z_][a-z0-9_]*)*):\s+(.*)$", line)
        if entry:
            current = [name.strip() for name in entry.group(1).split("/")]
            for name in current:
                docs[name] = entry.group(2).strip()
        elif current and line.startswith(" ") and line.strip():
            for name in current:
                docs[name] += " " + line.strip()
        else:
            current = []
    for field in dataclasses.fields(cls):
        if field.name not in docs:
            mentioned = next((text for text in docs.values() if re.search(rf"\b{field.name}\b", text)), None)
            if mentioned is not None:
                docs[field.name] = mentioned
    return docs


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _converter(kind: FlagType) -> Callable[[str], Any]:
    base = kind.base

    def convert(text: str) -> Any:
        if kind.optional and text.lower() == NONE_WORD:
            return None
        if isinstance(base, tuple):
            match = next((choice for choice in base if str(choice) == text), None)
            if match is None:
                raise argparse.ArgumentTypeError(f"choose from {', '.join(map(str, base))}")
            return match
        if base is bool:
            if text.lower() in ("1", "true", "yes"):
                return True
            if text.lower() in ("0", "false", "no"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        return base(text)

    convert.__name__ = getattr(base, "__name__", "choice")  # argparse names the type in its error messages
    return convert


def _metavar(kind: FlagType) -> str:
    if isinstance(kind.base, tuple):
        name = "{" + ",".join(map(str, kind.base)) + "}"
    else:
        name = {int: "INT", float: "FLOAT", str: "TEXT", bool: "BOOL"}[kind.base]
    return f"{name}|{NONE_WORD}" if kind.optional and not kind.sequence else name
