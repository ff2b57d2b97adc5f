"""Render transcription results in the formats users ask for."""

from vllm_whisper.outputs.formats import (
    MEDIA_TYPES,
    RESPONSE_FORMATS,
    TIMESTAMP_GRANULARITIES,
    render,
    render_text,
    to_json,
    to_text,
    to_tsv,
    to_verbose_json,
    write_result,
)
from vllm_whisper.outputs.subtitles import format_timestamp, to_srt, to_vtt

__all__ = [
    "format_timestamp", "to_srt", "to_vtt",
    "MEDIA_TYPES", "RESPONSE_FORMATS", "TIMESTAMP_GRANULARITIES", "render", "render_text", "to_json", "to_text",
    "to_tsv", "to_verbose_json", "write_result",
]
