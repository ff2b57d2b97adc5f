"""A realtime transcription client for tests and benchmarks: streams 16 kHz audio as PCM16 chunks over the
WebSocket at real-time pace and records every server event with its arrival time."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torchaudio.functional as AF
import websockets


@dataclass
class ReceivedEvent:
    at: float  # seconds since the first audio chunk was sent
    event: dict


@dataclass
class RealtimeRun:
    events: list[ReceivedEvent] = field(default_factory=list)
    speech_start: float = 0.0  # when the first chunk containing speech was sent
    speech_end: float = 0.0  # when the last chunk containing speech was sent
    commit_sent: float | None = None

    def of_type(self, kind: str) -> list[ReceivedEvent]:
        return [e for e in self.events if e.event.get("type") == kind]

    @property
    def transcripts(self) -> list[str]:
        return [e.event["transcript"] for e in self.of_type("conversation.item.input_audio_transcription.completed")]

    @property
    def delta_text(self) -> str:
        return "".join(e.event["delta"] for e in self.of_type("conversation.item.input_audio_transcription.delta"))


def pcm16_chunks(audio_16k: np.ndarray, rate: int, chunk_ms: int) -> list[str]:
    """Base64 PCM16 chunks of `chunk_ms` at `rate` (resampled with torchaudio)."""
    audio = audio_16k if rate == 16000 else AF.resample(torch.from_numpy(audio_16k), 16000, rate).numpy()
    pcm = (np.clip(audio, -1.0, 1.0 - 1 / 32768) * 32768).astype("<i2")
    step = rate * chunk_ms // 1000
    return [base64.b64encode(pcm[i:i + step].tobytes()).decode() for i in range(0, pcm.size, step)]


async def stream_audio(url: str, audio_16k: np.ndarray, speech: tuple[float, float], *, rate: int = 24000,
                       chunk_ms: int = 100, session: dict | None = None, commit: bool = False,
                       wait_for: int = 1, timeout: float = 60.0, headers: dict | None = None,
                       chunks: list[str] | None = None) -> RealtimeRun:
    """Send the audio at real-time pace; `speech` is (start, end) seconds of speech in it. Returns once
    `wait_for` completed transcripts arrived (or on timeout). `chunks`: the audio already as pcm16_chunks(audio_16k,
    rate, chunk_ms), so a client streaming the same audio many times resamples it once, not on its event loop."""
    run = RealtimeRun()
    chunks = pcm16_chunks(audio_16k, rate, chunk_ms) if chunks is None else chunks
    async with websockets.connect(url, additional_headers=headers or {}, max_size=2**24) as ws:
        start = time.perf_counter()

        async def receive() -> None:
            async for message in ws:
                event = json.loads(message)
                run.events.append(ReceivedEvent(time.perf_counter() - start, event))
                if len(run.transcripts) >= wait_for:
                    return

        receiver = asyncio.create_task(receive())
        if session is not None:
            await ws.send(json.dumps({"type": "session.update", "session": session}))
        for index, chunk in enumerate(chunks):
            chunk_start, chunk_end = index * chunk_ms / 1000, (index + 1) * chunk_ms / 1000
            target = start + chunk_start
            await asyncio.sleep(max(0.0, target - time.perf_counter()))
            now = time.perf_counter() - start
            if chunk_start <= speech[0] < chunk_end:
                run.speech_start = now
            if chunk_start < speech[1] <= chunk_end:
                run.speech_end = now
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        if commit:
            run.commit_sent = time.perf_counter() - start
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        try:
            await asyncio.wait_for(receiver, timeout)
        except asyncio.TimeoutError:
            pass
    return run
