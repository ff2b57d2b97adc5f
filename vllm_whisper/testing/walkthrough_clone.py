"""A fresh clone of the repository's committed HEAD for the README walkthrough, set-up aside: the running venv is
linked in as `.venv` and the built `vllm_whisper._C` copied, so the clone's own code runs without bootstrap or pip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class CloneError(RuntimeError):
    """The repository could not be cloned, or the clone does not run its own code."""


@dataclass(frozen=True)
class Clone:
    """A checked-out clone and the environment its commands run in."""

    path: Path
    commit: str
    env: dict[str, str]


def _git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise CloneError(f"git {' '.join(args)} failed in {cwd}: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def fresh_clone(root: Path, dest: Path) -> Clone:
    """Clone `root`'s committed HEAD into `dest` (uncommitted edits are not in it: commit before testing)."""
    root = Path(root).resolve()
    commit = _git("rev-parse", "HEAD", cwd=root)
    # --no-checkout + an explicit checkout: cloning a git worktree would otherwise check out the main branch.
    _git("clone", "--quiet", "--shared", "--no-checkout", str(root), str(dest), cwd=root.parent)
    _git("checkout", "--quiet", "--detach", commit, cwd=dest)
    (dest / ".venv").symlink_to(Path(sys.prefix))
    for built in (root / "vllm_whisper").glob("_C*.so"):
        shutil.copy2(built, dest / "vllm_whisper" / built.name)
    env = {**os.environ, "PATH": f"{dest / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(dest), "VIRTUAL_ENV": str(dest / ".venv")}
    clone = Clone(dest, commit, env)
    where = subprocess.run(["python", "-c", "import vllm_whisper; print(vllm_whisper.__file__)"], cwd=dest, env=env,
                           capture_output=True, text=True, timeout=60)
    if where.returncode != 0 or not Path(where.stdout.strip()).resolve().is_relative_to(dest.resolve()):
        raise CloneError(f"the clone's `python` imports vllm_whisper from {where.stdout.strip() or where.stderr}, "
                         f"not from {dest}")
    return clone
