"""The async transcription stream: deltas add up to the transcript, segments arrive as they close and equal the
offline result, and a stream closed early returns the cache to full."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from vllm_whisper.audio import load_audio
from vllm_whisper.config import EngineConfig
from vllm_whisper.engine.async_engine import AsyncLLMEngine
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.testing.speech import HARVARD_SENTENCES, synthesize
from vllm_whisper.transcribe.batch import transcribe_batch
from vllm_whisper.transcribe.stream import SegmentClosed, TextDelta, TranscriptionFinished, stream_transcription


@pytest.fixture(scope="module")
def long_audio(speech_dir) -> np.ndarray:
    """About 40 s: two windows of speech with pauses."""
    gap = np.zeros(8000, dtype=np.float32)
    parts = []
    for i, text in enumerate(HARVARD_SENTENCES[:12]):
        parts += [load_audio(synthesize(text, speech_dir / f"stream{i}.wav").path), gap]
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def engine(tiny_en):
    engine = AsyncLLMEngine(LLMEngine(tiny_en, EngineConfig(kv_cache_space_gib=0.25)))
    yield engine
    engine.shutdown()


async def collect(engine, audio, params, request_id):
    events = []
    async for event in stream_transcription(engine, audio, params, request_id):
        events.append(event)
    return events


def test_stream_matches_the_offline_result(engine, tiny_en, long_audio):
    params = TranscriptionParams(temperature=0.0)
    events = asyncio.run(collect(engine, long_audio, params, "s1"))
    [expected] = transcribe_batch(LLMEngine(tiny_en, EngineConfig(kv_cache_space_gib=0.25)), [long_audio], params)
    assert isinstance(events[-1], TranscriptionFinished)
    result = events[-1].result
    assert result.text == expected.text and len(result.segments) > 4
    deltas = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert deltas.strip() == result.text
    segments = [e.segment for e in events if isinstance(e, SegmentClosed)]
    assert [(s.id, s.start, s.end, s.text) for s in segments] == [(s.id, s.start, s.end, s.text) for s in
                                                                  result.segments]
    assert events[-1].generated_tokens > len(result.segments)


def test_segments_arrive_before_their_window_ends(engine, long_audio):
    """A closed segment is sent while later tokens of the same window are still decoding."""
    events = asyncio.run(collect(engine, long_audio, TranscriptionParams(temperature=0.0), "s2"))
    first_segment = next(i for i, e in enumerate(events) if isinstance(e, SegmentClosed))
    first_window_end = events[first_segment].segment.seek
    later_deltas = [e for e in events[first_segment + 1:] if isinstance(e, TextDelta)]
    assert first_window_end == 0 and later_deltas
    same_window = [e.segment for e in events if isinstance(e, SegmentClosed) and e.segment.seek == 0]
    assert len(same_window) >= 2  # several cues of the first window, each sent as it closed


def test_closing_the_stream_early_frees_the_cache(engine, long_audio):
    async def stop_after_three_deltas():
        count = 0
        stream = stream_transcription(engine, long_audio, TranscriptionParams(), "s3")
        async for event in stream:
            count += isinstance(event, TextDelta)
            if count == 3:
                break
        await stream.aclose()
        return await engine.wait_idle()

    stats = asyncio.run(stop_after_three_deltas())
    assert stats.num_free_kv_blocks == stats.num_kv_blocks
    assert stats.num_free_cross_slots == stats.num_cross_slots
    assert stats.num_running == 0 and stats.num_waiting == 0


def test_parallel_pieces_stream_in_time_order_and_match_offline(engine, tiny_en, long_audio):
    params = TranscriptionParams(chunking_strategy="parallel", word_timestamps=True, temperature=0.0)
    events = asyncio.run(collect(engine, long_audio, params, "s4"))
    [expected] = transcribe_batch(LLMEngine(tiny_en, EngineConfig(kv_cache_space_gib=0.25)), [long_audio], params)
    result = events[-1].result
    assert result.text == expected.text
    segments = [e.segment for e in events if isinstance(e, SegmentClosed)]
    assert [(s.id, s.start, s.end) for s in segments] == [(s.id, s.start, s.end) for s in expected.segments]
    assert all(a.start <= b.start for a, b in zip(segments, segments[1:]))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)).strip() == result.text
    assert all(s.words for s in result.segments)
