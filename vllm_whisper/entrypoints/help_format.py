"""The help formatter of every vllm-whisper parser: each option's --help line shows its default, as vLLM's do."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """ArgumentDefaultsHelpFormatter, except that a help text which already states its default ("(default: cuda
    when present, else cpu)", or the one argparse adds to --x/--no-x flags) is not given a second one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default:" in text:
            return text
        return super()._get_help_string(action) or ""
