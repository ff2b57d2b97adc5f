"""The hand-off to a lent GPU machine: scripts/gpu_bundle.py writes the aliases' tokenizers without weights, and with
only that folder on PYTHONPATH (the real packages shadowed, as on the GPU machine, which has none) tokenizers load
and random-weight models build, while loading real weights fails with a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
from vllm_whisper.model_executor.aliases import tokenizer_dir
from vllm_whisper.model_executor.errors import ModelLoadError
from vllm_whisper.model_executor.loader import load_model
from vllm_whisper.model_executor.whisper_config import WHISPER_SHAPES
from vllm_whisper.testing.random_model import random_model
from vllm_whisper.tokenizer import load_tokenizer
import sys
bundle = sys.argv[1]
for alias in ("tiny.en", "base"):
    assert str(tokenizer_dir(alias)).startswith(bundle), tokenizer_dir(alias)
tok = load_tokenizer(tokenizer_dir("tiny.en"), 51864)
assert tok.decode(tok.encode(" hello world")) == " hello world"
config = WHISPER_SHAPES["tiny.en"]
loaded = random_model(config, tok)
assert loaded.model.decoder.embed_tokens.weight.shape[0] == 51864
try:
    load_model("tiny.en")
except ModelLoadError as exc:
    print("weights absent:", exc)
else:
    raise SystemExit("tiny.en loaded from a bundle that has no weights")
"""


def test_bundle_holds_tokenizers_only_and_they_load(tmp_path):
    out = tmp_path / "bundle"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_bundle.py"), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not any(p.name.startswith("model.bin") for p in files)
    assert sum(p.stat().st_size for p in files) < 16 * 2**20
    env = dict(os.environ, PYTHONPATH=f"{out / 'site'}{os.pathsep}{ROOT}")
    probe = subprocess.run([sys.executable, "-c", PROBE, str(out)], capture_output=True, text=True, env=env,
                           cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert "weights absent" in probe.stdout


def test_acceptance_script_rejects_an_unknown_step():
    script = ROOT / "scripts" / "gpu_acceptance.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    usage = subprocess.run(["bash", str(script), "everything"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr and "all|" in usage.stderr


def test_acceptance_all_runs_every_stage_under_its_limit_and_summarises(tmp_path):
    """The one-call step on a machine without a GPU (nvidia-smi faked): every stage runs although the ones before it
    failed or overran, each leaves its log in $OUT and one summary line, and the script itself exits 0."""
    bundle = tmp_path / "bundle"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_bundle.py"), "--out", str(bundle)], check=True,
                   capture_output=True, cwd=ROOT)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\necho 'no GPU here (faked), 0, 0 MiB'\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable, OUT=str(out),
               GPU_BUNDLE_DIR=str(bundle), ACCEPTANCE_TESTS_S="3", ACCEPTANCE_SHAPE_S="60", ACCEPTANCE_BUILD_S="60")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_acceptance.sh"), "all"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split()[0] for line in summary] == ["extension", "tests", "random_small", "random_large-v3-turbo"]
    assert "TIMED OUT after 3 s" in summary[1]
    assert all("FAILED" in line for line in summary[:1] + summary[2:]), summary
    assert "no CUDA GPU" in (out / "random_small.log").read_text()
    assert (out / "machine.txt").read_text().startswith("no GPU here")
