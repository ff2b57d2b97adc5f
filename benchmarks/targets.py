"""The `--targets` of benchmark_serving.py: the single server, Ray Serve with N replicas (`serve-N`) and the
faster-whisper peer, parsed once, and the resources each Serve replica gets."""

from __future__ import annotations

import os
from dataclasses import dataclass

SINGLE = "vllm-whisper"
PEER = "faster-whisper"
SERVE_PREFIX = "serve-"
DEFAULT_TARGETS = f"{SINGLE},{PEER}"


@dataclass(frozen=True)
class Target:
    """One system to launch and load: `kind` is single, serve or peer; `replicas` counts Serve replicas."""

    name: str
    kind: str
    replicas: int = 0


def parse_targets(text: str) -> list[Target]:
    """`vllm-whisper,serve-1,serve-2,faster-whisper` -> targets in that order; a ValueError names a bad one."""
    targets = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        if name == SINGLE:
            targets.append(Target(name, "single"))
        elif name == PEER:
            targets.append(Target(name, "peer"))
        elif name.startswith(SERVE_PREFIX) and name[len(SERVE_PREFIX):].isdigit() and int(name[len(SERVE_PREFIX):]):
            targets.append(Target(name, "serve", int(name[len(SERVE_PREFIX):])))
        else:
            raise ValueError(f"unknown target {name!r}: use {SINGLE}, {PEER} or {SERVE_PREFIX}N with N >= 1")
    if not targets:
        raise ValueError("--targets is empty: name at least one of vllm-whisper, serve-N, faster-whisper")
    if len({t.name for t in targets}) != len(targets):
        raise ValueError(f"--targets names a system twice: {text}")
    return targets


@dataclass(frozen=True)
class ReplicaResources:
    """What Ray reserves for each Serve replica (its CPUs also set the replica's torch threads)."""

    num_cpus: float
    num_gpus: float


def replica_resources(replicas: int, cpus: float | None, gpus: float | None, device: str | None,
                      cuda_available: bool, cores: int | None = None) -> ReplicaResources:
    """Defaults: the machine's cores split evenly over the replicas; one GPU each on a CUDA machine, else none."""
    cores = cores or os.cpu_count() or 1
    num_cpus = cpus if cpus is not None else max(cores / replicas, 0.5)
    if num_cpus <= 0:
        raise ValueError(f"--serve-cpus-per-replica must be positive, got {num_cpus}")
    on_cpu = (device or "").startswith("cpu")
    num_gpus = gpus if gpus is not None else (1.0 if cuda_available and not on_cpu else 0.0)
    if num_gpus < 0:
        raise ValueError(f"--serve-gpus-per-replica must be >= 0, got {num_gpus}")
    return ReplicaResources(num_cpus, num_gpus)
