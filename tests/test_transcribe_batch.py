"""Many files on the engine at once give exactly what the sequential reference loop gives, with one encoder
run per window (language detection shares the first window's encoder run)."""

from __future__ import annotations

import numpy as np

from vllm_whisper.audio import load_audio
from vllm_whisper.config import EngineConfig
from vllm_whisper.decoding.reference_runner import transcribe_sequential
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.testing.speech import synthesize
from vllm_whisper.transcribe.batch import transcribe_batch


def long_audio(clips, gap_seconds: float) -> np.ndarray:
    silence = np.zeros(int(gap_seconds * 16000), dtype=np.float32)
    return np.concatenate([part for c in clips for part in (load_audio(c.path), silence)])


def test_engine_batch_equals_sequential_reference(tiny_en, english_clips):
    audios = [load_audio(c.path) for c in english_clips[:6]]
    audios.append(long_audio(english_clips[6:10], 9.0))  # ~45 s: two windows
    audios.append(long_audio(english_clips[10:18], 4.0))  # ~52 s
    params = TranscriptionParams()
    engine = LLMEngine(tiny_en, EngineConfig(kv_cache_space_gib=1.0))
    batched = transcribe_batch(engine, audios, params)
    for audio, got in zip(audios, batched):
        expected = transcribe_sequential(tiny_en, audio, params)
        assert got.text == expected.text
        assert [(s.start, s.end, s.tokens) for s in got.segments] == [
            (s.start, s.end, s.tokens) for s in expected.segments]
    windows = len({s.seek for r in batched for s in r.segments})
    assert engine.stats.encoder_runs >= windows
    assert engine.stats.encoder_runs == engine.stats.cross_kv_projections
    assert engine.stats.num_free_cross_slots == engine.stats.num_cross_slots
    assert not engine.windows.windows  # every retained window was released


def test_language_detection_reuses_the_window(base_model, speech_dir):
    spanish = synthesize("El perro come carne en la casa. Mi hermana tiene un gato negro.",
                         speech_dir / "es_batch.wav", "espeak-ng", "es", words_per_minute=140)
    english = synthesize("The birch canoe slid on the smooth planks.", speech_dir / "en_batch.wav")
    engine = LLMEngine(base_model, EngineConfig(kv_cache_space_gib=1.0, kv_cache_dtype="float32"))  # exact probability
    results = transcribe_batch(engine, [load_audio(spanish.path), load_audio(english.path)], TranscriptionParams())
    assert [r.language for r in results] == ["es", "en"]
    assert engine.stats.encoder_runs == 2  # detection + transcription of each single window: one encoder run
    reference = transcribe_sequential(base_model, load_audio(spanish.path), TranscriptionParams())
    assert results[0].text == reference.text and reference.language == "es"
    assert abs(results[0].language_probability - reference.language_probability) < 1e-4


def test_word_alignment_reuses_the_windows_cross_kv(tiny_en, speech_dir, monkeypatch):
    """Word timestamps read the cross K/V the engine's slot already holds: one encoder run per window, and the
    same words as the reference loop (run before the encoder calls are counted)."""
    clip = synthesize("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background.",
                      speech_dir / "words_reuse.wav")
    audio = load_audio(clip.path)
    params = TranscriptionParams(word_timestamps=True, temperature=0.0)
    expected = transcribe_sequential(tiny_en, audio, params)
    calls = []
    original = tiny_en.model.encode
    monkeypatch.setattr(tiny_en.model, "encode", lambda mel, **kw: calls.append(mel.shape[0]) or original(mel, **kw))
    engine = LLMEngine(tiny_en, EngineConfig(kv_cache_space_gib=0.25))
    [got] = transcribe_batch(engine, [audio], params)
    assert sum(calls) == 1 == engine.stats.encoder_runs  # the window's encoder run, nothing for alignment
    words = [(w.word, w.start, w.end) for s in got.segments for w in s.words]
    assert words and words == [(w.word, w.start, w.end) for s in expected.segments for w in s.words]


def test_sampling_is_reproducible_without_a_seed_alone_and_in_a_batch(tiny_en, english_clips):
    """Temperature sampling draws from generators seeded per window (a fixed base when the request brings no
    seed): the same clips give the same text run after run, one at a time and all together."""
    from vllm_whisper import LLM

    llm = LLM(model="tiny.en", dtype="float32")
    clips = [c.path for c in english_clips[:4]]
    params = TranscriptionParams(temperature=(1.0,))  # every window samples
    together = [r.text for r in llm.transcribe(clips, params)]
    again = [r.text for r in llm.transcribe(clips, params)]
    alone = [llm.transcribe([clip], params)[0].text for clip in clips]
    assert together == again == alone
    seeded = [r.text for r in llm.transcribe(clips, TranscriptionParams(temperature=(1.0,), seed=1234))]
    assert seeded == [r.text for r in llm.transcribe(clips, TranscriptionParams(temperature=(1.0,), seed=1234))]


def test_vllm_sampling_options_give_the_same_text_alone_and_in_a_batch_of_30(english_clips, fox_clip):
    """vLLM's sampling options (seed, top_p, min_p, a repetition penalty) are per window: 30 clips give the same
    text one at a time and all at once, the clips whose greedy decode fails the checks included (they sample)."""
    from vllm_whisper import LLM

    llm = LLM(model="tiny.en", dtype="float32", kv_cache_space=1.0)
    audios = [load_audio(c.path) for c in english_clips] + [load_audio(fox_clip.path)]
    audios += [audio[:len(audio) // 2] for audio in audios[:5]]  # cut mid-sentence: a less likely decode
    assert len(audios) == 30
    params = TranscriptionParams(seed=42, top_p=0.95, min_p=0.01, repetition_penalty=1.1, max_new_tokens=96)
    alone = [llm.transcribe(audio, params)[0] for audio in audios]
    together = llm.transcribe(audios, params)
    assert [r.text for r in alone] == [r.text for r in together]
    assert any(s.temperature > 0 for r in together for s in r.segments)  # some window fell back to sampling
