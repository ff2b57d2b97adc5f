"""Beam search on the engine against a plain reference beam search (no batching, no paging) written here from
openai-whisper's algorithm; beams share the window's encoder run and, copy-on-write, their blocks."""

from __future__ import annotations

import random

import pytest
import torch

from vllm_whisper.audio import load_audio, window_features
from vllm_whisper.config import EngineConfig
from vllm_whisper.decoding.greedy import encode_window
from vllm_whisper.engine.llm_engine import LLMEngine
from vllm_whisper.engine.sampler import SamplingParams
from vllm_whisper.model_executor.whisper import ContiguousKVCache
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.sampling.reference import apply_rules_row
from vllm_whisper.testing.engine_runs import run_to_completion
from vllm_whisper.testing.speech import word_error_rate
from vllm_whisper.transcribe.sequential import build_rules


@torch.inference_mode()
def reference_beam_search(loaded, features, prompt, rules, beam_size, max_tokens, patience=1.0,
                          length_penalty=None) -> list[int]:
    """openai-whisper's BeamSearchDecoder + MaximumLikelihoodRanker for one window, written out plainly."""
    model, eot = loaded.model, rules.eot
    window = encode_window(model, features)
    cross = [(k.expand(beam_size, -1, -1, -1), v.expand(beam_size, -1, -1, -1)) for k, v in window.cross_kv]
    cache = ContiguousKVCache(model.config.decoder_layers, cross)
    sequences = [list(prompt) for _ in range(beam_size)]
    sum_logprobs = torch.zeros(beam_size)
    finished: dict[tuple, float] = {}
    max_candidates = round(beam_size * patience)
    feed = torch.tensor(sequences)
    for step in range(max_tokens):
        start = len(sequences[0]) - feed.shape[1]
        positions = torch.arange(start, start + feed.shape[1])[None].expand(beam_size, -1)
        hidden = model.decode(feed, positions, cache)
        logits = model.compute_logits(hidden[:, -1])
        for j in range(beam_size):
            logits[j] = apply_rules_row(rules, logits[j], sequences[j][len(prompt):])
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        scores, sources = {}, {}
        for j in range(beam_size):
            for logprob, token in zip(*logprobs[j].topk(beam_size + 1)):
                candidate = tuple(sequences[j] + [token.item()])
                scores[candidate] = (sum_logprobs[j] + logprob).item()
                sources[candidate] = j
        next_sequences, next_sources, newly_finished = [], [], {}
        for candidate in sorted(scores, key=scores.get, reverse=True):
            if candidate[-1] == eot:
                newly_finished[candidate] = scores[candidate]
            else:
                sum_logprobs[len(next_sequences)] = scores[candidate]
                next_sequences.append(list(candidate))
                next_sources.append(sources[candidate])
                if len(next_sequences) == beam_size:
                    break
        for candidate in sorted(newly_finished, key=newly_finished.get, reverse=True):
            if len(finished) >= max_candidates:
                break
            finished[candidate] = newly_finished[candidate]
        cache.reorder(torch.tensor(next_sources))
        sequences = next_sequences
        feed = torch.tensor([[s[-1]] for s in sequences])
        if len(finished) >= max_candidates:
            break
    if len(finished) < beam_size:
        for j in sorted(range(beam_size), key=lambda j: float(sum_logprobs[j]), reverse=True):
            finished[tuple(sequences[j] + [eot])] = float(sum_logprobs[j])
            if len(finished) >= beam_size:
                break

    def score(item):
        tokens, logprob = item
        length = len(tokens) - len(prompt) - 1
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        return logprob / penalty

    best = max(finished.items(), key=score)[0]  # first maximum, as numpy's argmax
    return list(best[len(prompt):-1])


def run_engine(engine, jobs) -> dict[str, list[int]]:
    return {k: v.tokens for k, v in run_to_completion(engine, jobs).items()}


def test_five_beams_match_the_reference_on_ten_clips(tiny_en, english_clips):
    rules = build_rules(tiny_en, TranscriptionParams(timestamps=True))
    prompt = tiny_en.tokenizer.sot_sequence(None, "transcribe", timestamps=True)
    params = SamplingParams(rules, beam_size=5, max_new_tokens=100)
    features = [window_features(load_audio(c.path), 80) for c in english_clips[:10]]
    engine = LLMEngine(tiny_en, EngineConfig(kv_cache_space_gib=1.0))
    got = run_engine(engine, [(f"c{i}", f, prompt, params) for i, f in enumerate(features)])
    for i, f in enumerate(features):
        assert got[f"c{i}"] == reference_beam_search(tiny_en, f, prompt, rules, 5, 100), english_clips[i].text
    stats = engine.stats
    assert stats.encoder_runs == 10  # five beams, one encoder run per window
    assert stats.num_free_kv_blocks == stats.num_kv_blocks and stats.num_free_cross_slots == stats.num_cross_slots


def test_beam_search_wer_no_worse_than_greedy(tiny_en, english_clips, capsys):
    """In the default transcription mode (with timestamps)."""
    rules = build_rules(tiny_en, TranscriptionParams(timestamps=True))
    prompt = tiny_en.tokenizer.sot_sequence(None, "transcribe", timestamps=True)
    features = [window_features(load_audio(c.path), 80) for c in english_clips]
    texts = {}
    for name, beams in (("greedy", 1), ("beam5", 5)):
        engine = LLMEngine(tiny_en, EngineConfig(kv_cache_space_gib=1.0))
        params = SamplingParams(rules, beam_size=beams)
        done = run_engine(engine, [(f"c{i}", f, prompt, params) for i, f in enumerate(features)])
        texts[name] = [tiny_en.tokenizer.decode(done[f"c{i}"]) for i in range(len(features))]
    references = [c.text for c in english_clips]
    greedy_wer, beam_wer = word_error_rate(references, texts["greedy"]), word_error_rate(references, texts["beam5"])
    with capsys.disabled():
        print(f"\n[beam] tiny.en WER on {len(references)} sentences: greedy {greedy_wer:.4f}, 5 beams {beam_wer:.4f}")
    assert beam_wer <= greedy_wer


@pytest.mark.parametrize("patience, length_penalty", [(1.0, None), (2.0, 0.6)])
def test_beams_under_preemption_and_cow_match_reference(small_random, patience, length_penalty):
    """A cache too small for all beams at once: groups are preempted and recomputed, shared blocks are copied
    on write, and every result still equals the reference."""
    rng = random.Random(11)
    torch.manual_seed(11)
    rules = build_rules(small_random, TranscriptionParams(timestamps=False))
    # Forbidding end-of-text makes beams run to the token limit, so the small cache must preempt.
    endless = build_rules(small_random, TranscriptionParams(
        timestamps=False, suppress_tokens=(*rules.suppress_tokens, small_random.tokenizer.eot)))
    prompt = small_random.tokenizer.sot_sequence(None, "transcribe", timestamps=False)
    jobs = []
    for i in range(6):
        params = SamplingParams(endless if i % 2 else rules, beam_size=3, max_new_tokens=rng.randrange(16, 21),
                                patience=patience, length_penalty=length_penalty)
        jobs.append((f"b{i}", torch.randn(80, 3000), prompt, params))
    engine = LLMEngine(small_random, EngineConfig(num_kv_blocks=34, num_cross_slots=3, block_size=2))
    got = run_engine(engine, jobs)
    for request_id, features, _, params in jobs:
        expected = reference_beam_search(small_random, features, prompt, params.rules, params.beam_size,
                                         params.max_new_tokens, patience, length_penalty)
        assert got[request_id] == expected, request_id
    stats = engine.stats
    assert stats.preemptions > 0
    assert stats.encoder_runs == 6
    assert stats.num_free_kv_blocks == stats.num_kv_blocks


def test_beam_search_parameters_are_validated(tiny_en):
    rules = build_rules(tiny_en, TranscriptionParams())
    with pytest.raises(ValueError, match="temperature 0"):
        SamplingParams(rules, beam_size=5, temperature=0.5)
    with pytest.raises(ValueError, match="beam_size"):
        SamplingParams(rules, beam_size=0)
    with pytest.raises(ValueError, match="patience"):
        SamplingParams(rules, beam_size=2, patience=0)
