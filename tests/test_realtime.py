"""Realtime transcription over a real WebSocket: a synthetic utterance streamed in 100 ms PCM16 chunks at
real-time pace gets stable deltas and a completed transcript, with server VAD or manual commits."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets

from vllm_whisper.audio import load_audio
from vllm_whisper.testing.realtime_client import pcm16_chunks, stream_audio
from vllm_whisper.testing.server import serve_in_thread
from vllm_whisper.testing.speech import HARVARD_SENTENCES, normalize_text, synthesize
from vllm_whisper.testing.timeline import speech_bounds
from vllm_whisper.transcribe.incremental import LocalAgreement

TEXT = " ".join(HARVARD_SENTENCES[:2])


@pytest.fixture(scope="module")
def server():
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.25",
                         "--api-key", "rt-key") as running:
        yield running


@pytest.fixture(scope="module")
def utterance(speech_dir):
    """About 5 s of speech after 1 s of silence, then 1.5 s of silence."""
    clip = load_audio(synthesize(TEXT, speech_dir / "realtime.wav").path)
    start, end = speech_bounds(clip)
    clip = clip[start:end]
    audio = np.concatenate([np.zeros(16000, np.float32), clip, np.zeros(24000, np.float32)])
    return audio, (1.0, 1.0 + clip.size / 16000)


def ws_url(server) -> str:
    return server.base_url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"


AUTH = {"Authorization": "Bearer rt-key"}


def test_server_vad_turn_gets_deltas_then_completed(server, utterance):
    audio, speech = utterance
    run = asyncio.run(stream_audio(ws_url(server), audio, speech, headers=AUTH))
    kinds = [e.event["type"] for e in run.events]
    assert kinds[0] == "transcription_session.created"
    for expected in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "input_audio_buffer.committed", "conversation.item.input_audio_transcription.delta",
                     "conversation.item.input_audio_transcription.completed"):
        assert expected in kinds, expected
    [transcript] = run.transcripts
    assert run.delta_text == transcript  # text once sent never changes: the deltas add up to the transcript
    want, got = normalize_text(TEXT).split(), normalize_text(transcript).split()
    assert len(set(want) - set(got)) <= 3, transcript
    started = run.of_type("input_audio_buffer.speech_started")[0].event
    stopped = run.of_type("input_audio_buffer.speech_stopped")[0].event
    assert abs(started["audio_start_ms"] - (speech[0] * 1000 - 300)) <= 200  # prefix padding 300 ms
    assert abs(stopped["audio_end_ms"] - speech[1] * 1000) <= 400
    item_ids = {e.event["item_id"] for e in run.events if "item_id" in e.event}
    assert len(item_ids) == 1
    deltas = run.of_type("conversation.item.input_audio_transcription.delta")
    assert len(deltas) >= 2 and deltas[0].at < run.speech_end  # partial text while still speaking
    print(f"first delta {deltas[0].at - run.speech_start:.2f} s after speech start; completed "
          f"{run.of_type('conversation.item.input_audio_transcription.completed')[0].at - run.speech_end:.2f} s "
          f"after speech end")


def test_manual_commit_without_turn_detection_at_16khz(server, utterance):
    audio, speech = utterance
    session = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
                                                            "transcription": {"model": "whisper-1", "language": "en"},
                                                            "turn_detection": None}}}
    run = asyncio.run(stream_audio(ws_url(server), audio, speech, rate=16000, session=session, commit=True,
                                   headers=AUTH))
    updated = run.of_type("session.updated")[0].event["session"]
    assert updated["audio"]["input"]["format"]["rate"] == 16000 and updated["audio"]["input"]["turn_detection"] is None
    assert not run.of_type("input_audio_buffer.speech_started")
    [transcript] = run.transcripts
    assert run.delta_text == transcript
    completed = run.of_type("conversation.item.input_audio_transcription.completed")[0]
    assert completed.at - run.commit_sent < 3.0
    assert "birch" in normalize_text(transcript) or "planks" in normalize_text(transcript)


def test_bad_events_get_error_events_and_the_session_goes_on(server):
    async def main():
        async with websockets.connect(ws_url(server), additional_headers=AUTH) as ws:
            await ws.recv()  # session created
            replies = []
            for message in ["not json", json.dumps({"type": "no.such.event", "event_id": "e1"}),
                            json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}),
                            json.dumps({"type": "session.update", "session": {"audio": {"input": {
                                "format": {"type": "audio/pcm", "rate": 12345}}}}}),
                            json.dumps({"type": "transcription_session.update", "session": {
                                "input_audio_transcription": {"language": "de"}}}),
                            json.dumps({"type": "input_audio_buffer.commit"})]:
                await ws.send(message)
                replies.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            replies.append(json.loads(await ws.recv()))
            return replies

    replies = asyncio.run(main())
    assert [r["type"] for r in replies[:-1]] == ["error"] * 6
    assert replies[1]["error"]["event_id"] == "e1" and replies[1]["error"]["code"] == "unknown_event"
    assert replies[-1]["type"] == "input_audio_buffer.cleared"


def test_wrong_key_is_refused_with_401(server):
    async def main():
        async with websockets.connect(ws_url(server), additional_headers={"Authorization": "Bearer nope"}) as ws:
            await ws.recv()

    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        asyncio.run(main())
    assert info.value.response.status_code == 401
    assert json.loads(info.value.response.body)["error"]["code"] == "invalid_api_key"


def test_local_agreement_only_commits_what_two_passes_share():
    agreement = LocalAgreement()
    assert agreement.update("The birch") == ""
    assert agreement.update("The birch canoe") == "The birch"
    assert agreement.update("The birch canoe slid on") == " canoe"
    assert agreement.update("The Burch canoe slid on the") == ""  # disagrees with sent text: wait
    assert agreement.update("The birch canoe slid on the smooth") == " slid on the"
    assert agreement.update("The birch canoe slid on the smooth. planks") == " smooth."
    assert agreement.finish("The birch canoe slid on the smooth planks.") == " planks."
    assert agreement.text == "The birch canoe slid on the smooth. planks."


def test_pcm16_chunks_are_100_ms():
    chunks = pcm16_chunks(np.zeros(16000, np.float32), 24000, 100)
    assert len(chunks) == 10 and all(len(c) == len(chunks[0]) for c in chunks)


def test_one_append_holding_two_turns_gives_two_items(server, speech_dir):
    """Server VAD splits audio that arrives in one append at each turn's end: each turn's words go to its own
    item, and the second turn's timeline continues where the first one's remainder starts."""
    first = load_audio(synthesize(HARVARD_SENTENCES[0], speech_dir / "turn_a.wav").path)
    second = load_audio(synthesize(HARVARD_SENTENCES[5], speech_dir / "turn_b.wav").path)
    a, b = (clip[slice(*speech_bounds(clip))] for clip in (first, second))
    silence = np.zeros(24000, np.float32)
    audio = np.concatenate([silence[:8000], a, silence, b, silence])
    [chunk] = pcm16_chunks(audio, 16000, chunk_ms=len(audio) * 1000 // 16000 + 1000)

    async def main() -> list[dict]:
        async with websockets.connect(ws_url(server), additional_headers=AUTH, max_size=2**24) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 16000}}}}}))
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            events = []
            while sum(e["type"].endswith("transcription.completed") for e in events) < 2:
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            return events

    events = asyncio.run(main())
    completed = [e for e in events if e["type"].endswith("transcription.completed")]
    texts = {e["item_id"]: normalize_text(e["transcript"]) for e in completed}
    items = [e["item_id"] for e in events if e["type"] == "input_audio_buffer.committed"]
    assert len(items) == 2 and set(items) == set(texts)
    assert "birch" in texts[items[0]] and "birch" not in texts[items[1]], texts
    assert len(texts[items[1]].split()) >= 4, texts
    starts = [e["audio_start_ms"] for e in events if e["type"] == "input_audio_buffer.speech_started"]
    second_start = (8000 + a.size + silence.size) / 16
    assert len(starts) == 2 and abs(starts[1] - (second_start - 300)) <= 300, (starts, second_start)
