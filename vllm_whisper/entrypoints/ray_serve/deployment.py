"""The Serve deployment: one engine per replica, serving the single server's FastAPI app (`build_app`, the same
routes, middlewares and error handling) through `@serve.ingress`.

The constructor loads the model, warms it up and starts the engine before Serve marks the replica running, so
no request reaches a cold engine; `check_health` reports a stopped engine, and Serve then replaces the replica.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import ray
import torch
from fastapi import FastAPI
from ray import serve

from vllm_whisper.entrypoints.api_server import build_app, create_state, parse_origins
from vllm_whisper.entrypoints.ray_serve.metrics_export import RayMetricsExport
from vllm_whisper.entrypoints.ray_serve.options import DEPLOYMENT_NAME
from vllm_whisper.entrypoints.ray_serve.replica_header import ReplicaHeaderMiddleware

logger = logging.getLogger("vllm_whisper.ray_serve")


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class WhisperServer:
    """One replica: the server's state (model, engine, service) and its app."""

    def __init__(self, server_args: dict):
        args = argparse.Namespace(**server_args)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))  # the replica's share of the node, not every core
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        self.args = args
        self.state = create_state(args)  # loads, warms up and starts the engine
        self.metrics_task = asyncio.get_running_loop().create_task(
            RayMetricsExport(self.state.metrics.registry).run(self.state))
        logger.info("replica %s serving %s on %s", self.replica_id, args.model, self.state.loaded.model.device)

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = build_app(self.state, parse_origins(self.args.allowed_origins))
        app.add_middleware(ReplicaHeaderMiddleware, replica_id=self.replica_id)
        return app

    async def check_health(self) -> None:
        """Serve calls this periodically; an exception marks the replica unhealthy and Serve replaces it."""
        if not self.state.engine.is_running:
            raise RuntimeError(f"replica {self.replica_id}: the engine has stopped")

    def __del__(self) -> None:
        """Serve calls this once the replica's requests have finished (or graceful_shutdown_timeout_s passed)."""
        self.metrics_task.cancel()
        self.state.engine.shutdown()
