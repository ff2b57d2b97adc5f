"""A real uvicorn server on a free loopback port, in a background thread, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import uvicorn

from vllm_whisper.entrypoints.api_server import ServerState, build_app, build_parser, create_state, server_config
from vllm_whisper.entrypoints.server_args import resolve_model_argument


@dataclass
class RunningServer:
    base_url: str
    state: ServerState


@contextmanager
def serve_in_thread(*flags: str, startup_timeout: float = 120.0) -> Iterator[RunningServer]:
    """Start the server with these command-line flags; stop it (and its engine) on exit."""
    args = build_parser().parse_args(list(flags))
    resolve_model_argument(args, flags)  # `--model A --model B` serves both, as on the command line
    state = create_state(args)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = server_config(build_app(state), args, port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", state)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        state.registry.shutdown()
        sock.close()
