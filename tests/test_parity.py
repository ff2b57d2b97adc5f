"""Parity with transformers on the same tiny.en weights: identical greedy token ids, and WER no worse."""

from __future__ import annotations

import pytest
import torch

from vllm_whisper.audio import load_audio, window_features
from vllm_whisper.decoding.greedy import encode_window, greedy_decode
from vllm_whisper.params import TranscriptionParams
from vllm_whisper.testing.speech import word_error_rate
from vllm_whisper.transcribe.sequential import build_rules


def ours(tiny_en, audio, timestamps: bool) -> list[int]:
    window = encode_window(tiny_en.model, window_features(audio, 80))
    prompt = tiny_en.tokenizer.sot_sequence(None, "transcribe", timestamps)
    rules = build_rules(tiny_en, TranscriptionParams(timestamps=timestamps))
    return greedy_decode(tiny_en.model, window, prompt, rules, 224).tokens


def theirs(hf_oracle, tiny_en, audio, timestamps: bool) -> list[int]:
    from transformers import WhisperFeatureExtractor

    features = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        out = hf_oracle.generate(features.input_features, return_timestamps=timestamps, max_new_tokens=224)
    tokens = out[0].tolist()
    tok = tiny_en.tokenizer
    prompt = tok.sot_sequence(None, "transcribe", timestamps)
    if tokens[: len(prompt)] == prompt:
        tokens = tokens[len(prompt):]
    while tokens and tokens[-1] == tok.eot:
        tokens.pop()
    return tokens


@pytest.mark.parametrize("timestamps", [False, True], ids=["no-timestamps", "timestamps"])
def test_greedy_token_ids_equal_transformers(tiny_en, hf_oracle, english_clips, timestamps):
    compared = 0
    for clip in english_clips[:12]:
        audio = load_audio(clip.path)
        expected = theirs(hf_oracle, tiny_en, audio, timestamps)
        assert ours(tiny_en, audio, timestamps) == expected, f"{clip.path.name}: {clip.text}"
        compared += 1
    assert compared >= 10


def test_wer_no_worse_than_transformers(tiny_en, hf_oracle, english_clips, capsys):
    references, our_texts, their_texts = [], [], []
    tok = tiny_en.tokenizer
    for clip in english_clips:
        audio = load_audio(clip.path)
        references.append(clip.text)
        our_texts.append(tok.decode(ours(tiny_en, audio, timestamps=False)))
        their_texts.append(tok.decode(theirs(hf_oracle, tiny_en, audio, timestamps=False)))
    our_wer, their_wer = word_error_rate(references, our_texts), word_error_rate(references, their_texts)
    with capsys.disabled():
        print(f"\n[parity] tiny.en WER on {len(references)} synthetic sentences: ours {our_wer:.4f}, "
              f"transformers {their_wer:.4f}")
    assert len(references) >= 20
    assert our_wer <= their_wer + 0.01
    assert our_wer < 0.25  # the sentences are clear; a broken model scores near 1.0
