"""Server-sent events for streamed transcriptions, in one shape that both OpenAI's and vLLM's clients read.

Each event is OpenAI's streaming-transcription event and vLLM's `transcription.chunk` at once (openai-python
keeps unknown fields on its event objects, and vLLM's clients ignore `type`, `delta` and `text`):

- `transcript.text.delta` while decoding: `delta` is the new text, and `choices[0].delta.content` the same text
  with `finish_reason` null. For subtitle formats each delta is one finished cue (with its `segment` times), so
  joining the deltas gives the file the done event carries.
- one `transcript.text.done` at the end: `text` is the whole transcript (OpenAI's clients read it), and its
  `choices[0]` is vLLM's final content chunk: empty `content` (the text was all sent already, so joining
  `content` still gives the transcript once) with `finish_reason` "stop". It carries `usage` unless the request
  set stream_include_usage=false.
- with stream_include_usage=true, vLLM's usage-only chunk follows: `choices` empty, `usage`, and
  `type` "transcript.usage" so readers that dispatch on `type` can skip it.
- with stream_continuous_usage_stats=true (and usage not turned off), every chunk carries `usage` so far.
- a stream that fails after its headers went out sends an `error` event (OpenAI's `{"error": {...}}`, which
  openai-python raises as APIError) in place of the done event.
- the stream always ends with `data: [DONE]` (after the done, usage or error event), where openai-python and
  vLLM's clients stop reading.

`usage` carries both namings of the same counts: OpenAI's (`type` "tokens", `input_tokens`, `output_tokens`)
and vLLM's (`prompt_tokens`, `completion_tokens`); `total_tokens` is their sum. Input tokens are the encoder
frames the decoder attends to (50 per second of audio).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass

from vllm_whisper.outputs.subtitles import VTT_HEADER, srt_cue, vtt_cue
from vllm_whisper.transcribe.result import Segment

AUDIO_TOKENS_PER_SECOND = 50  # encoder frames per second of audio: what the decoder attends to
DONE = "data: [DONE]\n\n"


def encode_event(payload: dict) -> str:
    """One SSE message."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def usage(duration: float, output_tokens: int) -> dict:
    """Token usage in OpenAI's names (audio tokens: encoder frames attended) and vLLM's, for the same counts."""
    audio_tokens = math.ceil(duration * AUDIO_TOKENS_PER_SECOND)
    return {"type": "tokens", "input_tokens": audio_tokens, "output_tokens": output_tokens,
            "total_tokens": audio_tokens + output_tokens,
            "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0},
            "prompt_tokens": audio_tokens, "completion_tokens": output_tokens}


def cue_text(segment: Segment, index: int, response_format: str) -> str:
    """A finished subtitle cue as delta text (VTT's first cue carries the WEBVTT header)."""
    if response_format == "srt":
        return srt_cue(index, segment)
    return (VTT_HEADER if index == 1 else "") + vtt_cue(segment)


@dataclass(frozen=True)
class StreamChunks:
    """The events of one streamed request: every chunk shares its `id`, `object`, `created` and `model`."""

    id: str
    object: str
    created: int
    model: str

    @classmethod
    def start(cls, task: str, model: str) -> "StreamChunks":
        """A new request's chunk identity, named as vLLM names it for the task."""
        prefix, kind = ("trsl", "translation") if task == "translate" else ("trsc", "transcription")
        return cls(f"{prefix}-{uuid.uuid4().hex}", f"{kind}.chunk", int(time.time()), model)

    def _chunk(self, event_type: str, choices: list[dict], usage_info: dict | None, **fields) -> str:
        payload = {"type": event_type, **fields, "id": self.id, "object": self.object, "created": self.created,
                   "model": self.model, "choices": choices}
        if usage_info is not None:
            payload["usage"] = usage_info
        return encode_event(payload)

    @staticmethod
    def _choice(content: str, finish_reason: str | None) -> dict:
        return {"index": 0, "delta": {"content": content}, "finish_reason": finish_reason, "stop_reason": None}

    def text_delta(self, delta: str, usage_info: dict | None = None) -> str:
        return self._chunk("transcript.text.delta", [self._choice(delta, None)], usage_info, delta=delta)

    def cue_delta(self, segment: Segment, index: int, response_format: str, usage_info: dict | None = None) -> str:
        """A finished subtitle cue as a delta, with its times."""
        text = cue_text(segment, index, response_format)
        return self._chunk("transcript.text.delta", [self._choice(text, None)], usage_info, delta=text,
                           segment={"id": segment.id, "start": segment.start, "end": segment.end,
                                    "text": segment.text})

    def text_done(self, text: str, usage_info: dict | None, finish_reason: str = "stop") -> str:
        return self._chunk("transcript.text.done", [self._choice("", finish_reason)], usage_info, text=text)

    def usage_only(self, usage_info: dict) -> str:
        """vLLM's final chunk for stream_include_usage: no choices, the request's usage."""
        return self._chunk("transcript.usage", [], usage_info)


def error_event(message: str, error_type: str = "server_error") -> str:
    """Sent in place of the done event when a stream fails after its headers went out (then [DONE])."""
    return encode_event({"type": "error", "error": {"message": message, "type": error_type, "param": None,
                                                    "code": None}})
