"""--audio-context: `full` (the default) encodes every window over 1500 frames as before; `auto` encodes a short
window over the bucketed frames its audio needs, stores only those in its slot, and every reader (both attention
backends, the chunked encoder, word alignment, the timestamp rules) keeps to them. Real tiny.en runs through the
engine, checked against the contiguous reference decoder over the same frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vllm_whisper import LLM
from vllm_whisper.attention.kv_cache_layout import KVCacheTensors
from vllm_whisper.attention.metadata import PagedAttentionMetadata
from vllm_whisper.attention.torch_paged import TorchPagedAttention
from vllm_whisper.audio import load_audio
from vllm_whisper.audio.features import window_features
from vllm_whisper.config import EngineConfig
from vllm_whisper.decoding.greedy import encode_window, greedy_decode
from vllm_whisper.engine.alignment import AlignmentParams
from vllm_whisper.engine.audio_context import MIN_FRAMES, encoder_frames
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.engine.sampler import SamplingParams
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.testing.engine_runs import run_to_completion
from vllm_whisper.testing.speech import word_error_rate
from vllm_whisper.transcribe.sequential import build_rules

WER_SLACK = 0.05  # auto vs full on 8 sentences; measured 0.144 vs 0.164 on 24 (benchmarks/README.md)


@pytest.fixture(scope="module")
def clips(english_clips):
    """Eight short sentences: (audio, features, reference text)."""
    chosen = english_clips[:8]
    audios = [load_audio(str(c.path)) for c in chosen]
    return [(a, window_features(a, 80), c.text) for a, c in zip(audios, chosen)]


def oracle(loaded, features: torch.Tensor, frames: int, prompt: list[int], params: SamplingParams) -> list[int]:
    """The contiguous reference decoder over the window's first `frames` encoder frames."""
    window = encode_window(loaded.model, features[:, :2 * frames])
    return greedy_decode(loaded.model, window, prompt, params.rules, params.max_new_tokens).tokens


def plain_params(loaded) -> tuple[list[int], SamplingParams]:
    prompt = loaded.tokenizer.sot_sequence("en", "transcribe", timestamps=False)
    return prompt, SamplingParams(build_rules(loaded, TranscriptionParams(timestamps=False)), max_new_tokens=40)


def run(engine: LLMEngine, jobs: list[tuple]) -> dict:
    """Add (request_id, features, prompt, params, audio_seconds) jobs and step until idle."""
    for job in jobs:
        engine.add_request(*job)
    return run_to_completion(engine)


def encoder_inputs(loaded) -> tuple[list[int], object]:
    """Mel frames of every encoder call, recorded by a forward pre-hook on its first convolution (the real encoder
    still runs, whole or in chunks)."""
    seen: list[int] = []
    handle = loaded.model.encoder.conv1.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[-1]))
    return seen, handle


def test_bucketing():
    assert encoder_frames("full", 3.0, 1500) == 1500
    assert encoder_frames("auto", 3.0, 1500) == MIN_FRAMES
    assert encoder_frames("auto", 21.0, 1500) == 1152  # 1050 + 50 margin, rounded up to 128
    assert encoder_frames("auto", 28.5, 1500) == 1500  # nearly a full window: no shortening


def test_full_is_the_default_and_matches_the_reference(tiny_en, clips):
    """Off (the default), windows are encoded over 3000 mel frames and tokens equal the reference's exactly."""
    assert EngineConfig().audio_context == "full"
    engine = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=64, num_cross_slots=4))
    prompt, params = plain_params(tiny_en)
    seen, handle = encoder_inputs(tiny_en)
    try:
        jobs = [(f"c{i}", f, prompt, params, len(a) / 16000) for i, (a, f, _) in enumerate(clips[:3])]
        outs = run(engine, jobs)
    finally:
        handle.remove()
    assert set(seen) == {3000}
    for i, (_, features, _) in enumerate(clips[:3]):
        assert outs[f"c{i}"].tokens == oracle(tiny_en, features, 1500, prompt, params)


@pytest.mark.parametrize("layers_per_step", [None, 2])
def test_auto_mixed_batch_short_and_full_window(tiny_en, clips, layers_per_step):
    """A 2-3 s clip is encoded over MIN_FRAMES frames, a 30 s window over all 1500, in one step (grouped by length);
    decoded together (per-row slot lengths), each equals the reference over its own frames. With the chunked
    encoder the two lengths go in separate encoder batches."""
    audio, short, _ = clips[0]
    long_audio = np.concatenate([a for a, _, _ in clips] * 2)[:30 * 16000]
    long = window_features(long_audio, 80)
    engine = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=64, num_cross_slots=4, audio_context="auto",
                                             encoder_layers_per_step=layers_per_step))
    prompt, params = plain_params(tiny_en)
    seen, handle = encoder_inputs(tiny_en)
    try:
        outs = run(engine, [("short", short, prompt, params, len(audio) / 16000),
                                          ("long", long, prompt, params, 30.0)])
    finally:
        handle.remove()
    assert sorted(seen) == [2 * MIN_FRAMES, 3000]
    assert outs["short"].tokens == oracle(tiny_en, short, MIN_FRAMES, prompt, params)
    assert outs["long"].tokens == oracle(tiny_en, long, 1500, prompt, params)


def test_torch_cross_attention_reads_only_the_slots_frames():
    """Rows over slots of different lengths equal full attention over those frames alone; frames past a slot's
    length hold NaN, so reading one would show."""
    gen = torch.Generator().manual_seed(0)
    heads, frames, dim = 2, 64, 16
    cross_k = torch.randn(3, heads, frames, dim, generator=gen)
    cross_v = torch.randn(3, heads, frames, dim, generator=gen)
    lens = [10, 64, 33]
    slots = [2, 0, 1]
    for slot, n in zip(slots, lens):
        cross_k[slot, :, n:] = cross_v[slot, :, n:] = float("nan")
    cache = KVCacheTensors([torch.zeros(4, 16, heads, dim)], [torch.zeros(4, 16, heads, dim)], [cross_k], [cross_v], 16)
    meta = PagedAttentionMetadata.build([[0], [1], [2]], [0, 0, 0], [1, 1, 1], slots, 16, torch.device("cpu"), lens)
    q = torch.randn(3, heads, 1, dim, generator=gen)
    out = TorchPagedAttention(cache, meta).cross_attend(0, q)
    for b, (slot, n) in enumerate(zip(slots, lens)):
        want = F.scaled_dot_product_attention(q[b:b + 1], cross_k[slot:slot + 1, :, :n], cross_v[slot:slot + 1, :, :n])
        torch.testing.assert_close(out[b:b + 1], want)


def test_auto_text_and_timestamps_on_sentences(clips):
    """Through LLM.transcribe with timestamps: auto's WER stays within WER_SLACK of full's and no segment ends after
    its clip's audio. With word timestamps, auto encodes whole windows (the alignment heads time words well only over
    the 1500 frames they were trained on), so its text and word times equal full's exactly."""
    audios, references = [a for a, _, _ in clips], [t for _, _, t in clips]
    full = LLM("tiny.en", dtype="float32", audio_context="full", num_kv_blocks=256, num_cross_slots=8)
    auto = LLM("tiny.en", dtype="float32", audio_context="auto", num_kv_blocks=256, num_cross_slots=8)
    with_words = {name: llm.transcribe(audios, word_timestamps=True) for name, llm in (("full", full), ("auto", auto))}
    for full_result, auto_result in zip(with_words["full"], with_words["auto"]):
        assert auto_result.text == full_result.text
        assert [(w.word, w.start, w.end) for s in auto_result.segments for w in s.words] == \
            [(w.word, w.start, w.end) for s in full_result.segments for w in s.words]
    shortened = auto.transcribe(audios)
    for audio, result in zip(audios, shortened):
        assert all(s.end <= len(audio) / 16000 + 0.02 for s in result.segments)
    full_wer = word_error_rate(references, [r.text for r in with_words["full"]])
    auto_wer = word_error_rate(references, [r.text for r in shortened])
    assert auto_wer <= full_wer + WER_SLACK, (full_wer, auto_wer, [r.text for r in shortened])


def test_a_window_whose_words_are_aligned_is_encoded_whole(tiny_en, clips):
    """Under auto, a request with full_audio_context (its words will be aligned) is encoded over all 1500 frames and
    decodes as the full-window reference, next to the same clip shortened; an alignment pass that encodes its own
    window encodes it whole too."""
    audio, short, _ = clips[0]
    seconds = len(audio) / 16000
    engine = LLMEngine(tiny_en, EngineConfig(num_kv_blocks=64, num_cross_slots=4, audio_context="auto"))
    prompt, params = plain_params(tiny_en)
    seen, handle = encoder_inputs(tiny_en)
    try:
        outs = run(engine, [("short", short, prompt, params, seconds),
                            ("words", short, prompt, params, seconds, None, False, 0, None, True)])
        aligned = [t for t in outs["words"].tokens if t < tiny_en.tokenizer.eot]  # text tokens
        engine.add_alignment_request("align", short, prompt, AlignmentParams(tuple(aligned), len(audio) // 160))
        run_to_completion(engine)
    finally:
        handle.remove()
    assert sorted(seen) == [2 * MIN_FRAMES, 3000, 3000]
    assert outs["short"].tokens == oracle(tiny_en, short, MIN_FRAMES, prompt, params)
    assert outs["words"].tokens == oracle(tiny_en, short, 1500, prompt, params)
