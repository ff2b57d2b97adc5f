"""What a model name that is neither an offline alias nor a path nor a hub id could have meant, for the error
message: Whisper's size names (large-v3, small.en, turbo, ...) and where their weights are published."""

from __future__ import annotations

OPENAI_HUB = "openai/whisper-{}"  # Hugging Face format
SYSTRAN_HUB = "Systran/faster-whisper-{}"  # CTranslate2 format (faster-whisper's own downloads)
SIZE_NAMES = ("tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en", "large-v1",
              "large-v2", "large-v3", "large-v3-turbo")
SIZE_ALIASES = {"large": "large-v3", "turbo": "large-v3-turbo"}  # openai-whisper's shorthands
NO_SYSTRAN = {"large-v3-turbo"}  # published in Hugging Face format only


def size_hint(name: str) -> str:
    """A sentence naming the hub ids and the directory that would serve a Whisper size name; '' otherwise."""
    size = SIZE_ALIASES.get(name.lower(), name.lower())
    if size not in SIZE_NAMES:
        return ""
    hubs = [OPENAI_HUB.format(size)] + ([] if size in NO_SYSTRAN else [SYSTRAN_HUB.format(size)])
    return (f"Whisper {size} is served by the hub id {' or '.join(hubs)} (downloaded on first use, needs internet "
            f"access), or offline by a directory holding either download (e.g. --model ./whisper-{size}).")
