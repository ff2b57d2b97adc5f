"""vLLM's realtime protocol on /v1/realtime (no `intent`), driven like vLLM's example client over a real WebSocket:
`session.created`, `session.update {model}`, `input_audio_buffer.commit`, base64 PCM16 appends at 16 kHz, a final
commit, then `transcription.delta`s adding up to `transcription.done`; its errors; and OpenAI's events on the same
path still getting OpenAI's protocol."""

from __future__ import annotations

import asyncio
import difflib
import json
import time
from dataclasses import dataclass, field

import numpy as np
import openai
import pytest
import websockets

from vllm_whisper.audio import load_audio
from vllm_whisper.testing.encode import encode_audio
from vllm_whisper.testing.realtime_client import pcm16_chunks
from vllm_whisper.testing.server import serve_in_thread
from vllm_whisper.testing.speech import HARVARD_SENTENCES, normalize_text, paragraph_corpus, synthesize
from vllm_whisper.testing.timeline import speech_bounds

TEXT = " ".join(HARVARD_SENTENCES[:2])
TURN_YIELD_S = 7.5  # --realtime-turn-yield-seconds of the module's server (the default is 15)


@pytest.fixture(scope="module")
def server():
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.25",
                         "--max-realtime-sessions", "2", "--realtime-turn-yield-seconds", str(TURN_YIELD_S)) as running:
        yield running


@pytest.fixture(scope="module")
def speech(speech_dir) -> np.ndarray:
    """About 5 s of speech (two sentences) with 0.5 s of silence either side, at 16 kHz."""
    clip = load_audio(synthesize(TEXT, speech_dir / "vllm_realtime.wav").path)
    clip = clip[slice(*speech_bounds(clip))]
    silence = np.zeros(8000, np.float32)
    return np.concatenate([silence, clip, silence])


def ws_url(server, query: str = "") -> str:
    return server.base_url.replace("http://", "ws://") + "/v1/realtime" + query


def http_transcript(server, audio: np.ndarray, tmp_path) -> str:
    wav = encode_audio(audio, 16000, tmp_path / "same.wav")
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    with wav.open("rb") as file:
        return client.audio.transcriptions.create(model="whisper-1", file=file).text


@dataclass
class VllmRun:
    created: dict
    events: list[dict] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # seconds after the first append
    final_commit_at: float = 0.0

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    @property
    def delta_text(self) -> str:
        return "".join(e["delta"] for e in self.of_type("transcription.delta"))


async def vllm_client(url: str, audio: np.ndarray, *, chunk_ms: int = 100, pace: float = 0.0,
                      model: str = "whisper-1") -> VllmRun:
    """vLLM's example client: wait for session.created, validate the model, commit to start, append PCM16 chunks
    (`pace` seconds apart), commit with final=true and read until transcription.done (or an error)."""
    async with websockets.connect(url, max_size=2**24) as ws:
        run = VllmRun(json.loads(await ws.recv()))
        await ws.send(json.dumps({"type": "session.update", "model": model}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        start = time.perf_counter()

        async def receive() -> None:
            async for message in ws:
                run.events.append(json.loads(message))
                run.arrived.append(time.perf_counter() - start)
                if run.events[-1]["type"] in ("transcription.done", "error"):
                    return

        receiver = asyncio.create_task(receive())
        for chunk in pcm16_chunks(audio, 16000, chunk_ms):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            await asyncio.sleep(pace)
        run.final_commit_at = time.perf_counter() - start
        await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
        await asyncio.wait_for(receiver, 120)
        return run


def test_deltas_add_up_to_done_and_match_the_http_transcript(server, speech, tmp_path):
    run = asyncio.run(vllm_client(ws_url(server), speech, pace=0.1))  # real-time pace
    assert run.created["type"] == "session.created" and run.created["id"] and isinstance(run.created["created"], int)
    assert not run.of_type("error"), run.events
    assert {e["type"] for e in run.events} == {"transcription.delta", "transcription.done"}
    [done] = run.of_type("transcription.done")
    assert run.events[-1] is done and run.delta_text == done["text"]  # text once sent never changes
    deltas = run.of_type("transcription.delta")
    assert len(deltas) >= 2 and run.arrived[0] < run.final_commit_at, run.arrived  # partial text while streaming
    usage = done["usage"]
    assert usage["prompt_tokens"] == int(np.ceil(speech.size / 16000 * 50))  # encoder frames: 50 a second
    assert usage["completion_tokens"] > 5 and usage["total_tokens"] == usage["prompt_tokens"] + usage[
        "completion_tokens"]
    realtime, http = normalize_text(done["text"]), normalize_text(http_transcript(server, speech, tmp_path))
    assert difflib.SequenceMatcher(None, realtime.split(), http.split()).ratio() >= 0.8, (realtime, http)
    assert "birch" in realtime or "planks" in realtime, realtime
    print(f"first delta {run.arrived[0]:.2f} s after the first append; done "
          f"{run.arrived[-1] - run.final_commit_at:.2f} s after the final commit")


def test_an_utterance_longer_than_a_window_is_transcribed_whole(server, speech_dir, tmp_path):
    """About 40 s of speech at 4x real time: the utterance (cut into pieces at pauses, each within one window) is
    transcribed whole, like the same audio over HTTP."""
    [paragraph] = paragraph_corpus(speech_dir / "vllm_long", count=1, sentences_per_clip=14)
    audio = load_audio(paragraph.path)
    assert audio.size > 36 * 16000  # more than one 30 s window
    run = asyncio.run(vllm_client(ws_url(server), audio, chunk_ms=500, pace=0.125))  # 4x real time
    assert not run.of_type("error"), run.events
    [done] = run.of_type("transcription.done")
    assert run.delta_text == done["text"]
    got, want = normalize_text(done["text"]).split(), normalize_text(paragraph.text).split()
    assert difflib.SequenceMatcher(None, got, want).ratio() >= 0.7, (done["text"], paragraph.text)
    http = normalize_text(http_transcript(server, audio, tmp_path)).split()
    assert difflib.SequenceMatcher(None, got, http).ratio() >= 0.85, (done["text"], http)
    for words in (want[:5], want[-5:]):  # its start and its end are there
        assert len(set(words) & set(got)) >= 3, (words, done["text"])


def test_the_next_utterance_starts_with_the_next_commit(server, fox_clip):
    fox = load_audio(fox_clip.path)
    [chunk] = pcm16_chunks(fox, 16000, chunk_ms=fox.size * 1000 // 16000 + 1000)

    async def main() -> list[dict]:
        done = []
        async with websockets.connect(ws_url(server), max_size=2**24) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "session.update", "model": "tiny.en"}))
            for _ in range(2):
                await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": False}))
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
                while (event := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] != "transcription.done":
                    assert event["type"] == "transcription.delta", event
                done.append(event)
        return done

    first, second = asyncio.run(main())
    assert "fox" in normalize_text(first["text"]) and normalize_text(second["text"]) == normalize_text(first["text"])


def test_commit_needs_a_validated_model(server):
    async def main() -> list[dict]:
        async with websockets.connect(ws_url(server)) as ws:
            await ws.recv()
            replies = []
            for event in [{"type": "input_audio_buffer.commit"},
                          {"type": "session.update", "model": "whisper-large-v9"},
                          {"type": "input_audio_buffer.commit", "final": True},
                          {"type": "session.update"}]:
                await ws.send(json.dumps(event))
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            return replies

    replies = asyncio.run(main())
    assert [r["code"] for r in replies] == ["model_not_validated", "model_not_found", "model_not_validated",
                                            "invalid_event"], replies
    assert all(r["type"] == "error" and isinstance(r["error"], str) and set(r) == {"type", "error", "code"}
               for r in replies)
    assert "whisper-large-v9" in replies[1]["error"]


def test_bad_events_get_error_events_and_the_session_goes_on(server, fox_clip):
    fox = load_audio(fox_clip.path)
    [chunk] = pcm16_chunks(fox, 16000, chunk_ms=fox.size * 1000 // 16000 + 1000)

    async def main() -> tuple[list[dict], list[dict]]:
        async with websockets.connect(ws_url(server), max_size=2**24) as ws:
            await ws.recv()
            await ws.send(b"\x00\x01binary")  # the first frame: not OpenAI's, so vLLM's protocol answers it
            replies = [json.loads(await asyncio.wait_for(ws.recv(), 10))]
            await ws.send(json.dumps({"type": "session.update", "model": "whisper-1"}))  # no reply, as in vLLM
            for message in [json.dumps({"type": "no.such.event"}),
                            json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}),
                            json.dumps({"type": "input_audio_buffer.append"}),
                            json.dumps({"type": "input_audio_buffer.append", "audio": ""}),
                            json.dumps([1, 2, 3]),
                            "not json",
                            json.dumps({"type": "input_audio_buffer.commit", "final": "yes"}),
                            json.dumps({"type": "input_audio_buffer.commit", "final": True}),  # before any audio
                            json.dumps({"type": "session.update", "session": {"type": "transcription"}})]:
                await ws.send(message)
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit", "final": True}))
            after = [json.loads(await asyncio.wait_for(ws.recv(), 60))]
            while after[-1]["type"] != "transcription.done":
                after.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            return replies, after

    replies, after = asyncio.run(main())
    assert all(r["type"] == "error" and isinstance(r["error"], str) for r in replies), replies
    assert [r["code"] for r in replies] == [
        "invalid_frame", "unknown_event", "invalid_audio", "invalid_audio", "invalid_audio", "invalid_json",
        "invalid_json", "invalid_event", "input_audio_buffer_commit_empty", "invalid_event"], replies
    assert "fox" in normalize_text(after[-1]["text"]) and "".join(e.get("delta", "") for e in after) == after[-1][
        "text"]


def test_openai_events_without_intent_get_openai_protocol(server, fox_clip):
    """No intent: the greeting serves both clients, and OpenAI's first session.update picks OpenAI's protocol."""
    fox = load_audio(fox_clip.path)
    [chunk] = pcm16_chunks(fox, 16000, chunk_ms=fox.size * 1000 // 16000 + 1000)
    session = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
                                                            "turn_detection": None}}}

    async def main() -> tuple[dict, list[dict], dict]:
        async with websockets.connect(ws_url(server), max_size=2**24) as ws:
            created = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "session.update", "session": session}))
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            events = [json.loads(await asyncio.wait_for(ws.recv(), 60))]
            while events[-1]["type"] != "conversation.item.input_audio_transcription.completed":
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        async with websockets.connect(ws_url(server)) as ws:  # the beta event shape picks OpenAI's protocol too
            await ws.recv()
            await ws.send(json.dumps({"type": "transcription_session.update", "session": {}}))
            beta = json.loads(await asyncio.wait_for(ws.recv(), 10))
        return created, events, beta

    created, events, beta = asyncio.run(main())
    assert created["type"] == "session.created" and created["id"] == created["session"]["id"]
    assert created["session"]["type"] == "transcription" and created["event_id"]
    assert events[0]["type"] == "session.updated" and events[0]["session"]["audio"]["input"]["format"]["rate"] == 16000
    assert "input_audio_buffer.committed" in [e["type"] for e in events]
    assert "fox" in normalize_text(events[-1]["transcript"])
    assert beta["type"] == "transcription_session.updated"


def test_vllm_sessions_count_toward_the_session_limit(server):
    """--max-realtime-sessions 2: two vLLM sockets fill it, a third is refused, and closing frees the slots."""
    async def main():
        async with websockets.connect(ws_url(server)) as first, websockets.connect(ws_url(server)) as second:
            await first.recv()
            await second.recv()
            await first.send(json.dumps({"type": "session.update", "model": "whisper-1"}))
            assert server.state.realtime_sessions == 2
            try:
                async with websockets.connect(ws_url(server)) as third:
                    refusal = json.loads(await third.recv())
                    await third.wait_closed()
                    outcome = ("closed", third.close_code, refusal["error"]["code"])
            except websockets.InvalidStatus as exc:
                outcome = ("denied", exc.response.status_code, json.loads(exc.response.body)["error"]["code"])
        for _ in range(100):
            if server.state.realtime_sessions == 0:
                break
            await asyncio.sleep(0.05)
        return outcome

    outcome = asyncio.run(main())
    assert outcome in (("denied", 429, "rate_limit_exceeded"), ("closed", 1013, "rate_limit_exceeded")), outcome
    assert server.state.realtime_sessions == 0 and server.state.service.in_progress == 0


def test_final_passes_yield_for_the_configured_time_and_partial_passes_are_best_effort(server, speech):
    """--realtime-turn-yield-seconds reaches the engine: a committed turn's final pass is queued at priority 1 with
    that latency budget, its partial passes at priority 2 without one."""
    scheduler = server.state.engine.engine.scheduler
    queued: list[tuple[str, int, float | None]] = []
    add = scheduler.add

    def recording_add(request):
        queued.append((request.request_id, request.priority, request.urgent_after))
        return add(request)

    scheduler.add = recording_add
    try:
        run = asyncio.run(vllm_client(ws_url(server), speech, pace=0.05))
    finally:
        del scheduler.add
    assert not run.of_type("error"), run.events
    final = [(p, u) for request_id, p, u in queued if "-final" in request_id]
    partial = [(p, u) for request_id, p, u in queued if request_id.startswith("rt-") and "-final" not in request_id]
    assert final and set(final) == {(1, TURN_YIELD_S)}, queued
    assert partial and set(partial) == {(2, None)}, queued
