"""Serve applications of the server: from parsed flags (`vllm-whisper serve --ray`) or from Serve's own tooling,
whose `args` are the server's flags as keys (`serve run vllm_whisper.entrypoints.ray_serve.app:app_builder
model=tiny.en num_replicas=2`, or a config file's `args:`; see deploy/serve_config.yaml)."""

from __future__ import annotations

import argparse
from typing import Any

import ray
from ray.serve import Application

from vllm_whisper.entrypoints.api_server import build_parser
from vllm_whisper.entrypoints.ray_serve.deployment import WhisperServer
from vllm_whisper.entrypoints.ray_serve.options import replica_plan

TRUE_WORDS = ("true", "1", "yes", "on")


def whisper_application(args: argparse.Namespace, **deployment_overrides: Any) -> Application:
    """The deployment bound to these flags; `deployment_overrides` go to `Deployment.options` last (e.g. an
    autoscaling_config with shorter delays)."""
    plan = replica_plan(args, cluster_has_gpus=_cluster_has_gpus())
    options = {**plan.deployment_options(), **deployment_overrides}
    return WhisperServer.options(**options).bind(vars(args))


def app_builder(args: dict[str, Any]) -> Application:
    """Serve's application builder: `args` maps flag names (`max_num_seqs` or `max-num-seqs`) to values."""
    return whisper_application(parse_server_args(args))


def parse_server_args(args: dict[str, Any]) -> argparse.Namespace:
    """The server's flags from a mapping, through the server's own parser (same defaults and checks)."""
    parser = build_parser()
    parser.error = _invalid  # a ValueError for Serve to report, not a SystemExit inside the controller
    switches = {action.dest for action in parser._actions if action.nargs == 0}
    argv: list[str] = []
    for key, value in (args or {}).items():
        name = str(key).replace("-", "_")
        flag = "--" + name.replace("_", "-")
        if name in switches:
            if str(value).lower() in TRUE_WORDS:
                argv.append(flag)
        elif value is None:
            continue
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ValueError(f"unknown server options {unknown}; the keys are the flags of `vllm-whisper serve --help` "
                         "(e.g. model, max_num_seqs, num_replicas)")
    namespace.ray = True
    return namespace


def _invalid(message: str) -> None:
    raise ValueError(f"invalid server options: {message}")


def _cluster_has_gpus() -> bool:
    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0
