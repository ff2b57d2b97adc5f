"""EngineArgs: each engine flag is defined once, every entry point takes all of them with the same defaults,
--max-model-len reaches /v1/models and the per-window token budget, and bad values fail with a clear message."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from vllm_whisper import EngineArgs
from vllm_whisper.config import EngineConfig
from vllm_whisper.entrypoints import cli, llm as llm_module
from vllm_whisper.entrypoints.api_server import build_parser as server_parser
from vllm_whisper.entrypoints.api_server import create_state
from vllm_whisper.entrypoints.llm import LLM

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vllm_whisper"
FLAGS = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(EngineArgs)}
VLLM_NAMES = ("--model", "--served-model-name", "--dtype", "--quantization", "--device", "--max-num-seqs",
              "--max-model-len", "--kv-cache-space", "--gpu-memory-utilization", "--attention-backend",
              "--max-encoder-windows-per-step", "--enforce-eager")


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def entry_point_parsers() -> dict[str, argparse.ArgumentParser]:
    return {"cli transcribe": subparser(cli.build_parser(), "transcribe"),
            "cli serve": subparser(cli.build_parser(), "serve"),
            "api_server": server_parser()}


# --- (a) every flag everywhere, defined once -----------------------------------------------------------
def test_the_vllm_flag_names_are_all_engine_args():
    assert set(VLLM_NAMES) <= set(FLAGS.values())


@pytest.mark.parametrize("name", ["cli transcribe", "cli serve", "api_server"])
def test_every_engine_flag_is_on_every_parser(name):
    missing = set(FLAGS.values()) - option_strings(entry_point_parsers()[name])
    assert not missing, f"{name} lacks {sorted(missing)}"


def test_llm_takes_every_engine_args_field_as_a_keyword():
    parameters = inspect.signature(LLM.__init__).parameters
    assert set(FLAGS) <= set(parameters)
    for field in dataclasses.fields(EngineArgs):
        assert parameters[field.name].default == field.default, field.name


@pytest.mark.parametrize("flag", sorted(FLAGS.values()))
def test_each_engine_flag_is_defined_exactly_once_in_the_package(flag):
    """A flag appears as a quoted string ("--max-num-seqs") only where it is defined: EngineArgs.add_cli_args."""
    pattern = re.compile(r"""["']""" + re.escape(flag) + r"""["']""")
    places = [(path.relative_to(ROOT).as_posix(), len(pattern.findall(path.read_text())))
              for path in PACKAGE.rglob("*.py")]
    places = [(path, count) for path, count in places if count]
    assert places == [("vllm_whisper/engine_args.py", 1)], places


def test_benchmarks_take_engine_flags_from_engine_args():
    """No benchmark defines one of our engine's flags itself (benchmark_kernels' --model and --dtype pick kernel
    shapes and dtypes, and convert_to_ggml's --model the checkpoint to convert, not an engine)."""
    pattern = re.compile(r"""add_argument\(\s*["'](""" + "|".join(map(re.escape, FLAGS.values())) + r""")["']""")
    offenders = {path.name: pattern.findall(path.read_text()) for path in (ROOT / "benchmarks").rglob("*.py")
                 if path.name not in ("benchmark_kernels.py", "convert_to_ggml.py")}
    assert not {name: flags for name, flags in offenders.items() if flags}


def test_help_texts_show_defaults():
    text = " ".join(server_parser().format_help().split())  # argparse wraps long help lines
    assert "(default: 64 on CUDA; 32 on the CPU" in text and "(default: 448)" in text
    assert "cuda when present, else cpu" in text
    assert "(default: 64 on CUDA; 32 on the CPU" in " ".join(subparser(cli.build_parser(), "transcribe").format_help().split())


# --- (b) one default per option ------------------------------------------------------------------------
def test_defaults_are_the_same_on_every_entry_point():
    parsed = {
        "cli transcribe": cli.build_parser().parse_args(["transcribe", "a.wav"]),
        "cli serve": cli.build_parser().parse_args(["serve"]),
        "api_server": server_parser().parse_args([]),
    }
    for name, args in parsed.items():
        assert EngineArgs.from_cli_args(args) == EngineArgs(), name
    assert llm_module._engine_args("tiny.en", None, None, {}) == EngineArgs()
    assert EngineArgs().device is None  # resolved at load time: cuda when present, else cpu


def test_device_default_is_cuda_when_present(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert EngineArgs().resolved_device == "cuda"
    assert EngineArgs(device="cpu").resolved_device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert EngineArgs().resolved_device == "cpu"
    assert EngineArgs().load_model_kwargs() == {"dtype": "auto", "device": "cpu", "quantization": None}


def test_flags_reach_the_engine_config():
    args = server_parser().parse_args(["--max-num-seqs", "3", "--max-model-len", "224", "--kv-cache-space", "0.5",
                                       "--block-size", "32", "--max-encoder-windows-per-step", "1",
                                       "--num-kv-blocks", "40", "--num-cross-slots", "4", "--enforce-eager"])
    config = EngineArgs.from_cli_args(args).create_engine_config()
    assert config == EngineConfig(max_num_seqs=3, max_model_len=224, kv_cache_space_gib=0.5, block_size=32,
                                  max_encoder_windows_per_step=1, num_kv_blocks=40, num_cross_slots=4,
                                  enforce_eager=True)
    assert config.default_max_new_tokens == 112
    assert EngineConfig().default_max_new_tokens == 224


# --- (c) max_model_len is reported and used ------------------------------------------------------------
def test_max_model_len_reaches_v1_models_and_the_token_budget():
    from vllm_whisper.testing.server import serve_in_thread

    with serve_in_thread("--model", "tiny.en", "--dtype", "float32", "--kv-cache-space", "0.5",
                         "--max-model-len", "224") as server:
        cards = httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]
        assert [card["max_model_len"] for card in cards] == [224, 224]
        assert httpx.get(f"{server.base_url}/v1/models/whisper-1", timeout=30).json()["max_model_len"] == 224
        assert server.state.service.limits.max_new_tokens == 112


def test_llm_and_cli_budget_tokens_from_max_model_len(monkeypatch, fox_clip):
    seen = []
    monkeypatch.setattr(llm_module, "transcribe_batch", lambda engine, audios, params: seen.append(params) or [])
    model = LLM(model="tiny.en", dtype="float32", max_model_len=64, kv_cache_space=0.25)
    model.transcribe(np.zeros(16000, dtype=np.float32))
    assert model.engine.config.max_model_len == 64 and seen[-1].max_new_tokens == 32
    LLM(model="tiny.en", dtype="float32", kv_cache_space=0.25).transcribe(np.zeros(16000, dtype=np.float32))
    assert seen[-1].max_new_tokens == 224

    class Stop(Exception):
        pass

    def stop(engine, inputs, max_active_files):  # the CLI streams through LLM.transcribe_iter
        seen.append(next(iter(inputs))[2])
        raise Stop

    monkeypatch.setattr(llm_module, "iter_batch", stop)
    with pytest.raises(Stop):
        cli.main(["transcribe", str(fox_clip.path), "--max-model-len", "100", "--kv-cache-space", "0.25"])
    assert seen[-1].max_new_tokens == 50


def test_llm_keeps_its_call_styles():
    kept = llm_module._engine_args("base", None, EngineConfig(max_model_len=200), {"dtype": "float32",
                                                                                   "device": "cpu"})
    assert (kept.model, kept.dtype, kept.device, kept.max_model_len) == ("base", "float32", "cpu", 200)


# --- (d) validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(max_model_len=8), "max_model_len must be between 16 and 448"),
    (dict(max_model_len=449), "--max-model-len"),
    (dict(max_num_seqs=0), "max_num_seqs must be at least 1"),
    (dict(max_encoder_windows_per_step=0), "--max-encoder-windows-per-step"),
    (dict(dtype="float8"), "dtype must be one of auto"),
    (dict(quantization="int4"), "quantization must be one of int8"),
    (dict(device="tpu"), "device .--device. must be cpu or cuda"),
    (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization must be in"),
    (dict(kv_cache_space=0), "kv_cache_space must be a positive number of GiB"),
    (dict(attention_backend="flash"), "attention_backend must be one of"),
])
def test_bad_values_raise_value_errors_naming_the_flag(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EngineArgs(**kwargs)


def test_entry_points_reject_bad_values_before_loading(capsys):
    with pytest.raises(ValueError, match="max_model_len must be between 16 and 448"):
        create_state(server_parser().parse_args(["--max-model-len", "8"]))
    assert cli.main(["transcribe", "a.wav", "--max-model-len", "500"]) == 2
    assert "max_model_len must be between 16 and 448" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_model_len must be between"):
        LLM(max_model_len=1000)
    with pytest.raises(TypeError, match="EngineArgs fields"):
        LLM(max_num_seq=4)
    with pytest.raises(ValueError, match="not both"):
        LLM(engine_config=EngineConfig(), max_num_seqs=4)
    with pytest.raises(SystemExit):
        server_parser().parse_args(["--dtype", "float8"])
