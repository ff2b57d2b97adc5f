"""Property-based and schema fuzzing of everything a client controls: the upload form's fields, realtime event
sequences (valid, invalid, binary, huge, out of order), the audio decoder on mutated real files, and every route of
the OpenAPI schema. Invariant for all: no status >= 500, no dropped socket without an error event, nothing left
running, and the engine still transcribes a known clip identically afterwards."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import numpy as np
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_whisper.audio import AudioDecodeError, load_audio
from vllm_whisper.testing.encode import encode_audio
from vllm_whisper.testing.server import serve_in_thread

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                database=None)


@pytest.fixture(scope="module")
def server():
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.25",
                         "--max-audio-filesize-mb", "1", "--max-audio-duration", "30",
                         "--max-realtime-sessions", "4") as running:
        yield running


@pytest.fixture(scope="module")
def short_wav(tmp_path_factory) -> bytes:
    """Half a second of quiet noise: the engine's work per fuzzed request stays tiny."""
    samples = np.random.default_rng(0).normal(0, 0.01, 8000).astype(np.float32)
    return encode_audio(samples, 16000, tmp_path_factory.mktemp("fuzz") / "short.wav").read_bytes()


@pytest.fixture(scope="module")
def baseline(server, fox_clip) -> str:
    return _transcribe(server, fox_clip.path.read_bytes()).json()["text"]


def _transcribe(server, data: bytes, fields: dict | None = None, name: str = "a.wav") -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/audio/transcriptions", files={"file": (name, data)}, data=fields or {},
                      timeout=120)


def assert_server_clean_and_correct(server, fox_clip, baseline: str) -> None:
    """Nothing left running, healthy, and the known clip still gives the same text."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = server.state.engine.stats
        if server.state.service.in_progress == 0 and stats.num_running == 0 and stats.num_waiting == 0:
            break
        time.sleep(0.1)
    stats = server.state.engine.stats
    assert (server.state.service.in_progress, stats.num_running, stats.num_waiting) == (0, 0, 0)
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    assert _transcribe(server, fox_clip.path.read_bytes()).json()["text"] == baseline


# --- the upload form ----------------------------------------------------------------------------------------------
FIELDS = ["model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]", "stream",
          "stream_include_usage", "stream_continuous_usage_stats", "chunking_strategy", "chunking_strategy[type]",
          "chunking_strategy[silence_duration_ms]", "chunking_strategy[threshold]", "include[]", "seed",
          "unknown_field", "max_completion_tokens", "use_beam_search", "n", "length_penalty", "top_p", "top_k",
          "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty", "hotwords", "to_language",
          "vllm_xargs", "vad_config.enabled"]
NUMBERS = st.one_of(st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True)).map(str)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=10)
FIELD_VALUES = st.one_of(
    st.text(max_size=40),
    NUMBERS,
    st.sampled_from(["json", "text", "srt", "vtt", "verbose_json", "tsv", "true", "false", "auto", "word", "segment",
                     "en", "english", "de", "whisper-1", "tiny.en", "<|endoftext|>", "1e400", "-0", "NaN",
                     "[" * 5000 + "]" * 5000]),
    JSON_VALUES.map(json.dumps),
    st.fixed_dictionaries({"type": st.sampled_from(["server_vad", "auto", "x"])},
                          optional={"threshold": st.floats(), "silence_duration_ms": st.one_of(st.floats(),
                                                                                                 st.integers())}
                          ).map(json.dumps),
)


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(FIELDS), FIELD_VALUES, max_size=6))
def test_any_form_fields_get_a_4xx_or_a_transcription(server, short_wav, fields):
    response = _transcribe(server, short_wav, fields)
    assert response.status_code < 500, (fields, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["message"] and error["type"] == "invalid_request_error"


def test_the_form_fuzz_left_the_server_clean(server, fox_clip, baseline):
    assert_server_clean_and_correct(server, fox_clip, baseline)


# --- realtime event sequences -----------------------------------------------------------------------------------
def _pcm(seconds: float) -> str:
    samples = (np.random.default_rng(1).normal(0, 0.05, int(seconds * 24000)) * 32767).astype("<i2")
    return base64.b64encode(samples.tobytes()).decode()


VALID_EVENTS = st.sampled_from([
    {"type": "input_audio_buffer.append", "audio": _pcm(0.1)},
    {"type": "input_audio_buffer.append", "audio": _pcm(0.5)},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}},
    {"type": "transcription_session.update", "session": {"turn_detection": {"type": "server_vad"}}},
]).map(json.dumps)
INVALID_EVENTS = st.one_of(
    st.text(max_size=50),
    st.binary(max_size=64),
    JSON_VALUES.map(json.dumps),
    st.builds(lambda kind, body: json.dumps({"type": kind, **body}),
              st.sampled_from(["input_audio_buffer.append", "input_audio_buffer.commit", "session.update",
                               "transcription_session.update", "response.create", ""]),
              st.dictionaries(st.sampled_from(["audio", "session", "event_id", "item_id"]), JSON_VALUES, max_size=3)),
    st.just(json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 3_000_001})),  # 2.2 MB of silence
    st.just("{" * 50_000),
)


@FUZZ
@given(events=st.lists(st.one_of(VALID_EVENTS, INVALID_EVENTS), min_size=1, max_size=8))
def test_any_realtime_event_sequence_keeps_the_session_answering(server, events):
    url = server.base_url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"

    async def main() -> list[dict]:
        async with websockets.connect(url, max_size=2**24) as ws:
            replies = [json.loads(await ws.recv())]
            for event in events:
                await ws.send(event)
            await ws.send(json.dumps({"type": "input_audio_buffer.clear", "event_id": "probe"}))
            while True:  # every reply is a JSON event; the probe's answer proves the session is alive
                reply = json.loads(await asyncio.wait_for(ws.recv(), 60))
                replies.append(reply)
                if reply["type"] == "input_audio_buffer.cleared":
                    return replies

    replies = asyncio.run(main())
    assert all(isinstance(r, dict) and r.get("type") for r in replies)
    assert replies[0]["type"] == "transcription_session.created"


def test_the_realtime_fuzz_left_the_server_clean(server, fox_clip, baseline):
    time.sleep(0.5)  # sessions closed by the fuzzer finish their last turns
    assert server.state.realtime_sessions == 0
    assert_server_clean_and_correct(server, fox_clip, baseline)


# --- the audio decoder on mutated real files ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_files(fox_clip, tmp_path_factory) -> list[bytes]:
    audio = load_audio(fox_clip.path)[:16000]
    folder = tmp_path_factory.mktemp("mutate")
    return [encode_audio(audio, 16000, folder / f"fox.{ext}").read_bytes() for ext in ("wav", "flac", "mp3", "ogg")]


@st.composite
def mutated(draw, files: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(files)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "truncate", "splice", "zero", "header"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[position] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[position:]
        elif kind == "splice":
            data[position:position] = draw(st.binary(max_size=64))
        elif kind == "zero":
            data[position:position + 16] = bytes(min(16, len(data) - position))
        elif len(data) >= 40:  # header fields: rates, channel counts, sizes
            data[24:28] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
    return bytes(data)


def test_mutated_audio_decodes_or_raises_a_clear_error(real_files):
    @FUZZ
    @given(data=mutated(real_files))
    def check(data: bytes) -> None:
        try:
            samples = load_audio(data, max_duration_s=60)
        except AudioDecodeError as exc:
            assert str(exc)
            return
        assert samples.dtype == np.float32 and samples.ndim == 1 and np.isfinite(samples).all()

    check()


# --- every route of the OpenAPI schema ----------------------------------------------------------------------------
def test_every_route_of_the_schema_answers_below_500(server, fox_clip, baseline):
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    failures = []
    for operation in schema.get_all_operations():
        operation = operation.ok()

        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        @given(case=operation.as_strategy())
        def check(case) -> None:
            response = case.call(base_url=server.base_url, timeout=60)
            if response.status_code >= 500:
                failures.append((case.operation.label, response.status_code, response.text[:200]))

        check()
    assert failures == []
    assert_server_clean_and_correct(server, fox_clip, baseline)
