"""The `--ray` flags and the replica plan they make: replica count or autoscaling range, resources per replica
and admission, as Ray Serve deployment options. No ray import here: the single server parses these flags too."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from vllm_whisper.config import default_max_num_seqs

APP_NAME = "vllm-whisper"
DEPLOYMENT_NAME = "WhisperServer"
RAY_ONLY_FLAGS = ("ray_address", "num_replicas", "min_replicas", "max_replicas", "target_ongoing_requests",
                  "max_ongoing_requests", "num_cpus_per_replica", "num_gpus_per_replica")


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `vllm-whisper serve --ray`; without --ray none of them may be given."""
    group = parser.add_argument_group("Ray Serve (scale out: several engine replicas behind one endpoint)")
    group.add_argument("--ray", action="store_true",
                       help="serve through Ray Serve: replicas of this server, one engine each, behind Serve's proxy "
                            "on --host/--port (needs `pip install vllm-whisper[ray]`)")
    group.add_argument("--ray-address", default=None,
                       help="Ray cluster to deploy on (HOST:PORT, ray://HOST:10001 or auto); default: RAY_ADDRESS, "
                            "else a local Ray started for this server")
    group.add_argument("--num-replicas", type=int, default=None, help="a fixed number of replicas (default 1)")
    group.add_argument("--min-replicas", type=int, default=None, help="autoscaling: fewest replicas")
    group.add_argument("--max-replicas", type=int, default=None, help="autoscaling: most replicas")
    group.add_argument("--target-ongoing-requests", type=float, default=None,
                       help="autoscaling: requests in flight per replica Serve aims for (default: --max-num-seqs / 2)")
    group.add_argument("--max-ongoing-requests", type=int, default=None,
                       help="requests one replica is sent at once; more wait in Serve's router (default: "
                            "--max-num-seqs + --max-waiting-requests, the replica's own admission limit)")
    group.add_argument("--num-cpus-per-replica", type=float, default=None,
                       help="CPUs Ray reserves per replica (default 1); also its torch threads (at least 1)")
    group.add_argument("--num-gpus-per-replica", type=float, default=None,
                       help="GPUs per replica (default: 1 when --device is cuda, or when the cluster has GPUs and "
                            "--device is unset; else 0)")


def check_ray_flags(args: argparse.Namespace) -> None:
    """The Ray-only flags need --ray: refuse them on the single server rather than ignore them."""
    given = [name for name in RAY_ONLY_FLAGS if getattr(args, name, None) is not None]
    if not getattr(args, "ray", False) and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"{flags} only apply with --ray (serving on Ray Serve)")


@dataclass(frozen=True)
class ReplicaPlan:
    """How Serve runs the replicas: a fixed count or an autoscaling range, and what each one reserves."""

    num_replicas: int | None
    autoscaling_config: dict | None
    max_ongoing_requests: int
    num_cpus: float
    num_gpus: float
    graceful_shutdown_timeout_s: float

    def deployment_options(self) -> dict:
        """Keyword arguments for `Deployment.options(...)`."""
        options: dict = {
            "name": DEPLOYMENT_NAME,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = self.autoscaling_config
        else:
            options["num_replicas"] = self.num_replicas
        return options


def replica_plan(args: argparse.Namespace, cluster_has_gpus: bool) -> ReplicaPlan:
    """The plan the flags ask for; a ValueError names the conflicting flags."""
    autoscaling = args.min_replicas is not None or args.max_replicas is not None
    if autoscaling and args.num_replicas is not None:
        raise ValueError("give either --num-replicas N or --min-replicas A --max-replicas B, not both")
    gpus = args.num_gpus_per_replica
    if gpus is None:
        device = (args.device or "").split(":")[0]
        gpus = 1.0 if device == "cuda" or (not device and cluster_has_gpus) else 0.0
    if gpus > 0 and (args.device or "cuda").startswith("cpu"):
        raise ValueError("--num-gpus-per-replica > 0 with --device cpu reserves GPUs the replicas never use")
    max_num_seqs = args.max_num_seqs or default_max_num_seqs("cuda" if gpus > 0 else "cpu")  # the replicas' engine
    config = None
    if autoscaling:
        low = args.min_replicas if args.min_replicas is not None else 1
        high = args.max_replicas if args.max_replicas is not None else max(low, 1)
        if low < 0 or high < 1 or low > high:
            raise ValueError(f"--min-replicas {low} / --max-replicas {high}: need 0 <= min <= max and max >= 1")
        target = args.target_ongoing_requests or max(1.0, max_num_seqs / 2)
        config = {"min_replicas": low, "max_replicas": high, "initial_replicas": max(low, 1),
                  "target_ongoing_requests": target}
    elif args.target_ongoing_requests is not None:
        raise ValueError("--target-ongoing-requests needs an autoscaling range (--min-replicas/--max-replicas)")
    count = args.num_replicas if args.num_replicas is not None else 1
    if not autoscaling and count < 1:
        raise ValueError(f"--num-replicas must be at least 1, got {count}")
    cpus = args.num_cpus_per_replica if args.num_cpus_per_replica is not None else 1.0
    if cpus <= 0:
        raise ValueError(f"--num-cpus-per-replica must be positive, got {cpus}")
    return ReplicaPlan(
        num_replicas=None if autoscaling else count,
        autoscaling_config=config,
        max_ongoing_requests=args.max_ongoing_requests or max_num_seqs + args.max_waiting_requests,
        num_cpus=cpus,
        num_gpus=gpus,
        graceful_shutdown_timeout_s=args.shutdown_timeout,
    )
