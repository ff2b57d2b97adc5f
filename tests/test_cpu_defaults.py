"""`--dtype auto` on the CPU picks int8, bfloat16 or float32 from the CPU's instructions, logs it, and an explicit
dtype still gives exactly that dtype."""

from __future__ import annotations

import logging

import pytest
import torch

from vllm_whisper.model_executor.cpu_defaults import (
    choose_cpu_precision, cpu_flags, int8_matmul_available)
from vllm_whisper.model_executor.loader import load_model


@pytest.mark.parametrize("flags, int8_matmul, dtype, quantization", [
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, True, torch.float32, "int8"),
    ({"avx2", "avx_vnni"}, True, torch.float32, "int8"),
    ({"amx_int8", "amx_bf16"}, True, torch.float32, "int8"),
    ({"avx512_vnni", "avx512_bf16"}, False, torch.bfloat16, None),
    ({"avx2", "avx512f", "avx512_bf16"}, True, torch.bfloat16, None),
    ({"avx2", "fma"}, True, torch.float32, None),
    (set(), True, torch.float32, None),
])
def test_choice_follows_the_cpu_instructions(flags, int8_matmul, dtype, quantization):
    choice = choose_cpu_precision(frozenset(flags), int8_matmul)
    assert (choice.dtype, choice.quantization) == (dtype, quantization)
    assert choice.reason


def test_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512_vnni\n\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512_vnni"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_auto_loads_the_choice_for_this_cpu_and_logs_it(caplog):
    expected = choose_cpu_precision(cpu_flags(), int8_matmul_available())
    with caplog.at_level(logging.INFO, logger="vllm_whisper"):
        loaded = load_model("tiny.en")
    assert loaded.model.dtype == expected.dtype
    assert loaded.model.quantization == expected.quantization
    lines = [r.getMessage() for r in caplog.records if "CPU precision" in r.getMessage()]
    assert len(lines) == 1 and expected.label in lines[0]


@pytest.mark.parametrize("dtype, torch_dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_an_explicit_dtype_is_exactly_that(dtype, torch_dtype, caplog):
    with caplog.at_level(logging.INFO, logger="vllm_whisper"):
        loaded = load_model("tiny.en", dtype=dtype)
    assert loaded.model.dtype == torch_dtype and loaded.model.quantization is None
    assert not any("CPU precision" in r.getMessage() for r in caplog.records)


def test_the_default_transcribes_about_as_well_as_float32(english_clips):
    """Whatever auto picked on this CPU keeps corpus WER within 0.05 of float32 on 12 synthetic sentences."""
    from vllm_whisper import LLM
    from vllm_whisper.testing.speech import word_error_rate

    clips = english_clips[:12]
    truth = [c.text for c in clips]
    wer = {name: word_error_rate(truth, [r.text for r in LLM(model="tiny.en", **kwargs).transcribe(
        [c.path for c in clips])]) for name, kwargs in {"auto": {}, "float32": {"dtype": "float32"}}.items()}
    assert wer["auto"] <= wer["float32"] + 0.05, wer
