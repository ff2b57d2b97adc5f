"""`vllm-whisper serve --ray`: deploy the server on Ray Serve and keep it up until SIGINT/SIGTERM.

With --ray-address (or RAY_ADDRESS) the application goes onto that cluster; otherwise a local Ray is started for
this process, with the proxy's replica-loss handling (proxy_errors) switched on. On exit the application is
deleted (and the local Ray stopped), as `serve run` does.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from vllm_whisper.entrypoints.ray_serve.options import APP_NAME
from vllm_whisper.entrypoints.ray_serve.proxy_errors import PROXY_CALLBACK, PROXY_CALLBACK_ENV

logger = logging.getLogger("vllm_whisper.ray_serve")


def run_ray_server(args: argparse.Namespace) -> None:
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise SystemExit("--ray needs Ray Serve: pip install 'vllm-whisper[ray]'") from exc
    from vllm_whisper.entrypoints.ray_serve.app import whisper_application

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    local = address is None
    if local:
        os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)  # inherited by the proxy this Ray starts
    # "local": a new Ray for this process even when another runs on this machine (its Serve is stopped on exit).
    ray.init(address=address or "local", logging_level=logging.WARNING)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(whisper_application(args), name=APP_NAME, route_prefix="/", blocking=False)
        logger.info("serving %s on Ray Serve at http://%s:%d (application %r)", args.model, args.host, args.port,
                    APP_NAME)
        while not stop.wait(1.0):
            pass
        logger.info("stopping: deleting the application %r", APP_NAME)
    finally:
        serve.delete(APP_NAME)
        if local:
            serve.shutdown()
        ray.shutdown()
