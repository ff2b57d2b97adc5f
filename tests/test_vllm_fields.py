"""vLLM's transcription request fields, sent as vLLM's clients send them (the `openai` client with extra_body=, or
httpx multipart), honoured end to end on a real server with tiny.en and compared with LLM.transcribe on the same
clip; and the fields or values we cannot honour refused with a 400 that names them."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from vllm_whisper import LLM, TranscriptionParams
from vllm_whisper.entrypoints.openai.errors import OpenAIError
from vllm_whisper.entrypoints.openai.protocol import parse_form
from vllm_whisper.testing.server import serve_in_thread

HOTWORDS = "Fox, Lazy Dog"


@pytest.fixture(scope="module")
def server():
    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.5") as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(model="tiny.en", dtype="float32", kv_cache_space=0.5)  # as the server above


@pytest.fixture(scope="module")
def fox(fox_clip) -> bytes:
    return fox_clip.path.read_bytes()


def transcribe(client: openai.OpenAI, audio: bytes, **fields):
    """A transcription with vLLM's fields in extra_body (temperature and response_format as OpenAI's)."""
    openai_fields = {k: fields.pop(k) for k in ("temperature", "response_format", "stream") if k in fields}
    return client.audio.transcriptions.create(model="whisper-1", file=("fox.wav", audio), extra_body=fields,
                                              **openai_fields)


def text(client: openai.OpenAI, audio: bytes, **fields) -> str:
    return transcribe(client, audio, **fields).text


def offline(llm: LLM, fox_clip, **options) -> str:
    return llm.transcribe(fox_clip.path, TranscriptionParams(**options))[0].text


def post_form(server, audio: bytes, data: dict, endpoint: str = "transcriptions") -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/audio/{endpoint}", files={"file": ("fox.wav", audio)}, data=data,
                      timeout=120)


def assert_refused(response: httpx.Response, param: str, words: str = "") -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert words in error["message"]


@pytest.fixture(scope="module")
def greedy(client, fox) -> str:
    return text(client, fox)


# --- sampling ------------------------------------------------------------------------------------------------------
def test_seed_reproduces_sampling_at_temperature_one(client, llm, fox, fox_clip):
    seeded = [text(client, fox, temperature=1.0, seed=7) for _ in range(5)]
    assert len(set(seeded)) == 1
    assert seeded[0] == offline(llm, fox_clip, temperature=(1.0,), seed=7)  # the seed reached the engine
    assert seeded[0] != offline(llm, fox_clip, temperature=(1.0,))  # ... and is not the default seed


def test_top_k_one_and_min_p_near_one_sample_the_greedy_text(client, llm, fox, fox_clip, greedy):
    assert offline(llm, fox_clip, temperature=(1.0,)) != greedy  # sampling alone gives another text on this clip
    assert text(client, fox, temperature=1.0, top_k=1) == greedy
    assert text(client, fox, temperature=1.0, min_p=0.999) == greedy
    assert text(client, fox, temperature=1.0, top_p=1e-6) == greedy
    assert text(client, fox, vllm_xargs=json.dumps({"top_k": 1, "temperature": 1.0})) == greedy


def test_repetition_penalty_reaches_the_engine(client, llm, fox, fox_clip, greedy):
    penalised = text(client, fox, repetition_penalty=1.5)
    assert penalised != greedy and penalised == offline(llm, fox_clip, repetition_penalty=1.5)
    assert text(client, fox, frequency_penalty=0.5, presence_penalty=0.5) == offline(
        llm, fox_clip, frequency_penalty=0.5, presence_penalty=0.5)


# --- beam search ---------------------------------------------------------------------------------------------------
def test_use_beam_search_runs_the_engines_beam_search(client, llm, fox, fox_clip, greedy):
    assert text(client, fox, use_beam_search=True, n=1) == greedy
    beams = offline(llm, fox_clip, beam_size=5)
    assert beams != greedy  # on this clip the beams find another text
    assert text(client, fox, use_beam_search=True, n=5, length_penalty=1.0) == beams


def test_beam_search_values_we_cannot_honour_are_refused(server, fox):
    assert_refused(post_form(server, fox, {"n": "2"}), "n", "use_beam_search")
    assert_refused(post_form(server, fox, {"use_beam_search": "true", "n": "2", "stream": "true"}), "use_beam_search")
    assert_refused(post_form(server, fox, {"use_beam_search": "true", "n": "2", "length_penalty": "0.6"}),
                   "length_penalty")
    assert_refused(post_form(server, fox, {"use_beam_search": "true", "n": "100000"}), "n", "--max-num-seqs")


# --- token limit ---------------------------------------------------------------------------------------------------
def test_max_completion_tokens_limits_the_whole_request(client, fox, greedy):
    events = list(transcribe(client, fox, stream=True, max_completion_tokens=1))
    assert events[-1].type == "transcript.text.done" and events[-1].usage.output_tokens == 1
    verbose = transcribe(client, fox, response_format="verbose_json", max_completion_tokens=3)
    assert sum(len(s.tokens) for s in verbose.segments) == 3
    assert verbose.text and greedy.startswith(verbose.text)
    assert text(client, fox, max_completion_tokens=10**12) == greedy  # capped by the model, not an error


# --- prompt fields -------------------------------------------------------------------------------------------------
def test_hotwords_reach_the_prompt(client, llm, fox, fox_clip, greedy):
    boosted = text(client, fox, hotwords=HOTWORDS)
    assert boosted == offline(llm, fox_clip, hotwords=HOTWORDS) and boosted != greedy


def test_to_language_other_than_the_output_language_is_refused(server, fox):
    assert_refused(post_form(server, fox, {"to_language": "de"}), "to_language", "/v1/audio/translations")
    assert_refused(post_form(server, fox, {"to_language": "klingon"}), "to_language")
    assert post_form(server, fox, {"to_language": "english", "language": "en"}).status_code == 200


# --- vllm_xargs and the rest ---------------------------------------------------------------------------------------
def test_vllm_xargs_unknown_key_bad_json_and_doubled_fields(server, fox):
    assert_refused(post_form(server, fox, {"vllm_xargs": json.dumps({"beam_width": 4})}), "vllm_xargs.beam_width",
                   "beam_width")
    assert_refused(post_form(server, fox, {"vllm_xargs": "{not json"}), "vllm_xargs")
    assert_refused(post_form(server, fox, {"vllm_xargs": "[1, 2]"}), "vllm_xargs")
    assert_refused(post_form(server, fox, {"seed": "1", "vllm_xargs": json.dumps({"seed": 2})}), "vllm_xargs.seed")
    assert_refused(post_form(server, fox, {"vllm_xargs": json.dumps({"patience": "high"})}), "vllm_xargs.patience")
    ok = post_form(server, fox, {"vllm_xargs": json.dumps({"beam_size": 2, "no_speech_threshold": None})})
    assert ok.status_code == 200 and ok.json()["text"]


def test_fields_we_cannot_honour_are_refused_by_name(server, fox):
    assert_refused(post_form(server, fox, {"vad_config.speech_pad_ms": "30"}), "vad_config.speech_pad_ms")
    for field, value in (("seed", "1.5"), ("seed", str(2**64)), ("max_completion_tokens", "0"), ("top_p", "0"),
                         ("top_k", "-2"), ("min_p", "1.5"), ("repetition_penalty", "0"), ("frequency_penalty", "2.5"),
                         ("presence_penalty", "nan"), ("use_beam_search", "maybe")):
        assert_refused(post_form(server, fox, {field: value}), field)
    harmless = {"n": "1", "use_beam_search": "false", "length_penalty": "1.0", "include_stop_str_in_output": "true",
                "stream_continuous_usage_stats": "false", "top_k": "-1", "frequency_penalty": "0"}
    assert post_form(server, fox, harmless).status_code == 200


# --- the form to TranscriptionParams, without a server ----------------------------------------------------------------
def params_of(fields: dict, task: str = "transcribe") -> TranscriptionParams:
    return parse_form(fields, lambda name: [fields[name]] if name in fields else []).to_params(task, 224)


def test_every_honoured_field_lands_on_transcription_params():
    params = params_of({"seed": "-3", "max_completion_tokens": "50", "use_beam_search": "true", "n": "4",
                        "top_p": "0.9", "top_k": "20", "min_p": "0.05", "repetition_penalty": "1.2",
                        "frequency_penalty": "0.3", "presence_penalty": "-0.4", "hotwords": " Grafana ",
                        "vllm_xargs": json.dumps({"patience": 2, "condition_on_previous_text": False,
                                                  "max_new_tokens": 1000}),
                        "vad_config.enabled": "true", "vad_config.min_silence_duration_ms": "300"})
    assert (params.seed, params.max_completion_tokens, params.beam_size) == (-3, 50, 4)
    assert (params.top_p, params.top_k, params.min_p) == (0.9, 20, 0.05)
    assert (params.repetition_penalty, params.frequency_penalty, params.presence_penalty) == (1.2, 0.3, -0.4)
    assert params.hotwords == "Grafana" and params.patience == 2.0 and not params.condition_on_previous_text
    assert params.max_new_tokens == 224  # vllm_xargs cannot exceed the server's per-window limit
    assert params.vad_filter and params.vad_min_silence_ms == 300


def test_to_language_on_translations_must_be_english():
    assert params_of({"to_language": "English"}, "translate").task == "translate"
    with pytest.raises(OpenAIError) as refused:
        params_of({"to_language": "fr"}, "translate")
    assert refused.value.status == 400 and refused.value.param == "to_language"
    with pytest.raises(OpenAIError):
        params_of({"to_language": "en"}, "transcribe")  # transcribing keeps the spoken language: it must be given


def test_temperature_schedule_and_plain_greedy_through_vllm_xargs():
    """OpenAI's temperature keeps its fallback meaning; vllm_xargs can set the schedule itself, or turn the fallback
    off (vLLM's plain greedy) with a one-temperature schedule or by disabling the checks."""
    assert params_of({"temperature": "0"}).temperature == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert params_of({"vllm_xargs": json.dumps({"temperature": [0.0, 0.5]})}).temperature == (0.0, 0.5)
    assert params_of({"vllm_xargs": json.dumps({"temperature": [0.0]})}).temperature == (0.0,)
    no_checks = params_of({"vllm_xargs": json.dumps({"compression_ratio_threshold": None, "logprob_threshold": None})})
    assert no_checks.compression_ratio_threshold is None and no_checks.logprob_threshold is None
    for bad in ([], [2.0], ["hot"]):
        with pytest.raises(OpenAIError) as refused:
            params_of({"vllm_xargs": json.dumps({"temperature": bad})})
        assert refused.value.param == "vllm_xargs.temperature"
