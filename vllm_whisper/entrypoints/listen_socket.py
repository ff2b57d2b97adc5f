"""The server's listening socket, bound before the model loads: a busy port fails in a fraction of a second
instead of after the model has loaded, and uvicorn serves on the very socket that was checked."""

from __future__ import annotations

import errno
import socket

from vllm_whisper.entrypoints.cli_errors import UsageError


def bind_server_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening (connections are refused until the server starts).
    Raises UsageError saying what to change when the address is taken or not available."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on --host {host!r}: {exc.strerror}; use an address of this machine, "
                         "e.g. 127.0.0.1 or 0.0.0.0") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart over TIME_WAIT connections
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use (another server?); choose another with "
                             "--port, or stop the process that holds it") from exc
        if exc.errno == errno.EACCES:
            raise UsageError(f"no permission to listen on port {port} (ports below 1024 need root); choose "
                             "another with --port") from exc
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}; check --host and --port") from exc
    sock.set_inheritable(True)
    return sock
