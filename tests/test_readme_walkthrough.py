"""The README's commands, run top to bottom on a fresh clone (set-up aside), all succeed (issue 17).

Every ```bash and ```python block of README.md is run in order in a clone of the committed HEAD, or excused by a
`<!-- walkthrough: skip REASON -->` marker (see vllm_whisper/testing/readme_blocks.py); the input files the commands
name are synthesised speech, and the few placeholders are substituted as vllm_whisper/testing/walkthrough.py lists.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest

from vllm_whisper.model_executor.aliases import resolve_alias
from vllm_whisper.testing.readme_blocks import ReadmeFormatError, read_blocks
from vllm_whisper.testing.walkthrough import Walkthrough
from vllm_whisper.testing.walkthrough_clone import fresh_clone
from vllm_whisper.testing.walkthrough_inputs import write_readme_inputs
from vllm_whisper.testing.walkthrough_server import is_server_command

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_every_block_is_run_or_excused_with_a_reason():
    blocks = read_blocks(README)
    assert len(blocks) >= 10, "the README's bash and python blocks were not found"
    for block in blocks:
        if block.skip_reason is not None:
            assert len(block.skip_reason.split()) >= 3, f"line {block.line}: say why the block is not run"
        elif block.language == "bash":
            assert block.commands_to_run(), f"line {block.line}: a bash block with nothing to run: excuse it"
    servers = [c.text for b in blocks if b.language == "bash" and b.skip_reason is None for c in b.commands_to_run()
               if is_server_command(c.text)]
    assert any("vllm-whisper serve" in s for s in servers) and any("api_server" in s for s in servers), servers


@pytest.mark.walkthrough
def test_readme_commands_run_top_to_bottom_on_a_fresh_clone(tmp_path):
    clone = fresh_clone(ROOT, tmp_path / "clone")
    write_readme_inputs(clone.path, tmp_path / "speech")
    models_dir = tmp_path / "srv-whisper"
    models_dir.mkdir()
    (models_dir / "base").symlink_to(resolve_alias("base"))
    logs = tmp_path / "logs"
    logs.mkdir()
    cpu_before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    steps = Walkthrough(clone, models_dir, logs).run_all(read_blocks(clone.path / "README.md"))
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    print("\n".join(f"{step.seconds:6.1f} s  line {step.line:4d}  {step.command[:90]}" for step in steps))
    print(f"{time.monotonic() - started:6.1f} s wall, {cpu:6.1f} s CPU of the commands, {len(steps)} steps")
    assert len(steps) >= 20


def test_markers_are_checked(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- walkthrough: skip-lines 1 set-up -->\n```bash\npip install x\nvllm-whisper --version\n```\n"
                      "```text\nnot a command\n```\n")
    (block,) = read_blocks(readme)
    assert [c.text for c in block.commands_to_run()] == ["vllm-whisper --version"]
    for marker in ("skip", "skip-lines 3 beyond the block", "run it"):
        readme.write_text(f"<!-- walkthrough: {marker} -->\n```bash\npip install x\n```\n")
        with pytest.raises(ReadmeFormatError):
            read_blocks(readme)
