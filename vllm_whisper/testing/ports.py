"""A free TCP port for a server that a test starts in another process, chosen where nothing else takes it meanwhile.

A port from binding port 0 is an ephemeral one: until the server binds it (seconds later for a Ray Serve proxy), the
kernel may hand the same port to any process's outbound connection or port-0 bind, and the server then fails to bind
(seen with Ray's own processes). Ports below the ephemeral range are never handed out that way, so only an explicit
binder can take them; above 20000 they also stay clear of Ray's worker ports (10002-19999 by default)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST_PORT = 20000  # above Ray's default worker port range
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_START = 32768  # Linux's default when the range cannot be read


def ephemeral_start() -> int:
    """The first port the kernel hands out for port-0 binds and outbound connections."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_START


def free_port(host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A port on `host` that is free now and outside the ephemeral range (an ephemeral one when that range leaves
    no room above LOWEST_PORT)."""
    top = ephemeral_start() - 1
    if top > LOWEST_PORT:
        for port in random.sample(range(LOWEST_PORT, top + 1), min(attempts, top - LOWEST_PORT + 1)):
            with socket.socket() as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
