"""Errors a user can fix, reported as one line on stderr with exit code 2 (never a traceback), for every entry
point: `vllm-whisper transcribe`, `vllm-whisper serve` and `python -m vllm_whisper.entrypoints.api_server`.

Stdlib only: a missing dependency must be reportable before any third-party import.
"""

from __future__ import annotations

import sys
from typing import Callable

USAGE_EXIT = 2  # argparse's exit status for a bad command line; ours for every error the user can fix
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report a command ended by Ctrl-C
VENV_HINT = "source .venv/bin/activate"


class UsageError(Exception):
    """A problem with the command line or the environment, reported as `error: <message>` and exit status 2."""


def fail(message: str, code: int = USAGE_EXIT) -> int:
    """Print one line on stderr and return the exit status to use."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return code


def missing_dependency_message(exc: ImportError) -> str:
    """An ImportError of a required package as what to do: run inside the project's virtual environment."""
    package = (exc.name or "").split(".")[0]
    what = f"the Python package {package!r} cannot be imported" if package else f"an import failed ({exc})"
    if package == "vllm_whisper":  # our own module is missing or broken: an incomplete install
        what = f"{exc}"
    return (f"{what} by {sys.executable}: run vllm-whisper inside the project's virtual environment "
            f"({VENV_HINT}; create it with bash scripts/bootstrap.sh), or install the package there "
            f"(pip install -e .)")


def run_with_one_line_errors(main: Callable[[], int]) -> int:
    """Run `main`; turn the errors a user can fix (UsageError: a bad option, an unknown model, a busy port, ...;
    ImportError: a missing package) and Ctrl-C into one line on stderr and an exit status. Anything else is a
    bug and keeps its traceback."""
    try:
        return main()
    except UsageError as exc:
        return fail(str(exc))
    except ImportError as exc:
        return fail(missing_dependency_message(exc))
    except KeyboardInterrupt:
        return fail("interrupted", INTERRUPTED_EXIT)
