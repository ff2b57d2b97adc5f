"""Language identification and translation with the multilingual `base` model on synthetic speech in five
languages (the voices and speaking rates are ones base understands: espeak-ng is hard for it at its default
rate, and its French only at a brisk one)."""

from __future__ import annotations

import pytest

from vllm_whisper import LLM, TranscriptionParams
from vllm_whisper.testing.speech import normalize_text, synthesize

# language -> (engine, voice, words per minute, text)
SPEECH = {
    "en": ("flite", "slt", None, "The weather is nice today and we are going to walk to the park with the children."),
    "es": ("espeak-ng", "es", 140, "El perro grande come carne en la cocina de la casa todos los días."),
    "de": ("espeak-ng", "de", 150, "Der Hund spielt jeden Morgen im Garten mit dem roten Ball. "
                                   "Meine Mutter kocht heute eine Suppe für die ganze Familie."),
    "fr": ("espeak-ng", "fr+m3", 160, "Le chat dort sur le canapé pendant que nous mangeons le dîner. "
                                      "Demain, nous allons visiter le musée avec nos amis."),
    "it": ("festival", "pc_diphone", None, "Il ragazzo mangia una mela rossa nel giardino della scuola. "
                                          "Domani andiamo al mare con tutta la famiglia."),
}


@pytest.fixture(scope="module", params=[None, "int8"], ids=["float32", "int8"])
def llm(request) -> LLM:
    """base in float32 and with --quantization int8: both detect, transcribe and translate the five languages."""
    return LLM(model="base", quantization=request.param)


@pytest.fixture(scope="module")
def clips(speech_dir):
    return {language: synthesize(text, speech_dir / f"lang_{language}.wav", engine, voice, words_per_minute=wpm).path
            for language, (engine, voice, wpm, text) in SPEECH.items()}


def test_detects_five_languages(llm, clips):
    results = llm.transcribe(list(clips.values()))
    detected = {language: result.language for language, result in zip(clips, results)}
    print({lang: (r.language, round(r.language_probability, 3)) for lang, r in zip(clips, results)})
    assert detected == {language: language for language in clips}
    for result in results:
        assert 0.0 < result.language_probability <= 1.0
    spanish = normalize_text(results[list(clips).index("es")].text)
    assert "perro" in spanish and "casa" in spanish  # transcribed in Spanish, not translated


def test_translating_spanish_gives_english_with_its_key_nouns(llm, clips):
    [result] = llm.translate([clips["es"]])
    text = normalize_text(result.text)
    print(result.text)
    assert result.language == "es"
    found = [noun for noun in ("dog", "kitchen", "house", "meat") if noun in text.split()]
    assert len(found) >= 2, result.text
    assert "perro" not in text


def test_given_language_skips_detection(llm, clips):
    before = llm.engine.stats
    [result] = llm.transcribe([clips["de"]], TranscriptionParams(language="de"))
    after = llm.engine.stats
    assert result.language == "de" and result.language_probability is None
    assert after.encoder_runs - before.encoder_runs == 1
