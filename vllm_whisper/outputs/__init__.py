"""Render transcription results in the formats users ask for."""

from vllm_whisper.outputs.subtitles import format_timestamp, to_srt, to_vtt

__all__ = ["format_timestamp", "to_srt", "to_vtt"]
