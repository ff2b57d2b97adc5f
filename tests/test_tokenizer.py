"""Tokenizer: special ids for English-only and multilingual vocabularies, languages, timestamps, suppression."""

from __future__ import annotations

import json

import pytest

from vllm_whisper.languages import LANGUAGES, normalize_language
from vllm_whisper.tokenizer import TokenizerLoadError, load_tokenizer


def test_english_only_special_ids(tiny_en):
    tok = tiny_en.tokenizer
    assert not tok.is_multilingual
    assert (tok.eot, tok.sot, tok.no_timestamps, tok.timestamp_begin) == (50256, 50257, 50362, 50363)
    assert tok.sot_sequence(None, "transcribe", timestamps=False) == [50257, 50362]
    assert tok.sot_sequence("en", "transcribe", timestamps=True) == [50257]
    assert list(tok.supported_languages) == ["en"]


def test_multilingual_special_ids(base_model):
    tok = base_model.tokenizer
    assert tok.is_multilingual
    assert (tok.eot, tok.sot, tok.no_timestamps, tok.timestamp_begin) == (50257, 50258, 50363, 50364)
    assert tok.sot_sequence("en", "transcribe", timestamps=False) == [50258, 50259, 50359, 50363]
    assert tok.sot_sequence("German", "translate", timestamps=True) == [50258, 50261, 50358]


def test_language_table_matches_vocabulary_order(base_model):
    tok = base_model.tokenizer
    codes = list(LANGUAGES)[:-1]  # base predates Cantonese
    assert list(tok.language_to_id) == codes
    assert [tok.language_to_id[c] for c in codes] == list(range(tok.sot + 1, tok.sot + 1 + len(codes)))
    assert len(tok.supported_languages) == 99


def test_language_names_and_errors():
    assert normalize_language("Spanish") == "es"
    assert normalize_language(" EN ") == "en"
    assert normalize_language("mandarin") == "zh"
    with pytest.raises(ValueError, match="Unsupported language 'xx'"):
        normalize_language("xx")


def test_english_only_refuses_translation_and_other_languages(tiny_en):
    with pytest.raises(ValueError, match="cannot translate"):
        tiny_en.tokenizer.sot_sequence(None, "translate", timestamps=False)
    with pytest.raises(ValueError, match="only transcribes English"):
        tiny_en.tokenizer.sot_sequence("de", "transcribe", timestamps=False)


def test_text_roundtrip_and_timestamps(tiny_en):
    tok = tiny_en.tokenizer
    ids = tok.encode(" Hello world, this is Whisper.")
    assert tok.decode(ids) == " Hello world, this is Whisper."
    assert tok.decode([tok.sot, *ids, tok.eot]) == " Hello world, this is Whisper."
    assert tok.timestamp_seconds(tok.timestamp_begin + 150) == pytest.approx(3.0)
    assert tok.timestamp_token(30.0) == tok.timestamp_begin + 1500
    assert tok.decode_with_timestamps([tok.timestamp_begin, *ids, tok.timestamp_begin + 100]) == (
        "<|0.00|> Hello world, this is Whisper.<|2.00|>"
    )
    with pytest.raises(ValueError):
        tok.timestamp_token(31.0)


def test_computed_suppress_list_equals_checkpoint_list(tiny_en, base_model):
    for loaded in (tiny_en, base_model):
        assert loaded.tokenizer.default_suppress_tokens() == sorted(loaded.generation.suppress_tokens)
        assert loaded.tokenizer.suppress_at_begin() == list(loaded.generation.begin_suppress_tokens)


def test_vocab_json_and_merges_give_the_same_tokenizer(tiny_en, tmp_path):
    """A Hugging Face directory with vocab.json + merges.txt (no tokenizer.json) tokenizes identically."""
    data = json.loads((tiny_en.source_dir / "tokenizer.json").read_text())
    (tmp_path / "vocab.json").write_text(json.dumps(data["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    rebuilt = load_tokenizer(tmp_path, tiny_en.config.vocab_size)
    text = " It's easy to tell the depth of a well, isn't it? 1234 ünïcödé"
    assert rebuilt.encode(text) == tiny_en.tokenizer.encode(text)
    assert rebuilt.special == tiny_en.tokenizer.special


def test_missing_tokenizer_is_named(tmp_path):
    with pytest.raises(TokenizerLoadError, match="expected tokenizer.json"):
        load_tokenizer(tmp_path, 51864)


@pytest.mark.parametrize("fixture", ["tiny_en", "base_model"])
def test_special_token_spelling_in_text_is_plain_text(fixture, request):
    """A prompt that types "<|endoftext|>" or "<|de|>" gets ordinary text tokens, never the control tokens."""
    tokenizer = request.getfixturevalue(fixture).tokenizer
    for text in ("hi <|endoftext|> there", "<|startoftranscript|><|de|><|translate|>", "<|0.00|> now"):
        ids = tokenizer.encode(text)
        assert all(i < tokenizer.eot for i in ids), (text, ids)
        assert tokenizer.decode(ids) == text
    # ordinary text keeps the tokenizer's own ids
    text = " The birch canoe slid on the smooth planks. Naïve café, 日本語 🙂"
    assert tokenizer.encode(text) == tokenizer.tokenizer.encode(text, add_special_tokens=False).ids
