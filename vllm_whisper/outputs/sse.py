"""Server-sent events in OpenAI's streaming-transcription shape: `transcript.text.delta` while decoding and one
`transcript.text.done` at the end. For subtitle formats each delta is one finished cue, so joining the deltas
gives the same file the done event carries."""

from __future__ import annotations

import json
import math

from vllm_whisper.outputs.subtitles import VTT_HEADER, srt_cue, vtt_cue
from vllm_whisper.transcribe.result import Segment

AUDIO_TOKENS_PER_SECOND = 50  # encoder frames per second of audio: what the decoder attends to


def encode_event(payload: dict) -> str:
    """One SSE message."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def text_delta(delta: str) -> str:
    return encode_event({"type": "transcript.text.delta", "delta": delta})


def cue_delta(segment: Segment, index: int, response_format: str) -> str:
    """A finished subtitle cue as a delta (VTT's first cue carries the WEBVTT header), with its times."""
    if response_format == "srt":
        text = srt_cue(index, segment)
    else:
        text = (VTT_HEADER if index == 1 else "") + vtt_cue(segment)
    return encode_event({
        "type": "transcript.text.delta", "delta": text,
        "segment": {"id": segment.id, "start": segment.start, "end": segment.end, "text": segment.text},
    })


def usage(duration: float, output_tokens: int) -> dict:
    """Token usage as OpenAI reports it for streamed transcriptions (audio tokens: encoder frames attended)."""
    audio_tokens = math.ceil(duration * AUDIO_TOKENS_PER_SECOND)
    return {"type": "tokens", "input_tokens": audio_tokens, "output_tokens": output_tokens,
            "total_tokens": audio_tokens + output_tokens,
            "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0}}


def text_done(text: str, usage_info: dict | None) -> str:
    payload: dict = {"type": "transcript.text.done", "text": text}
    if usage_info is not None:
        payload["usage"] = usage_info
    return encode_event(payload)


def error_event(message: str, error_type: str = "server_error") -> str:
    """Sent in place of the done event when a stream fails after its headers went out."""
    return encode_event({"type": "error", "error": {"message": message, "type": error_type, "param": None,
                                                    "code": None}})
