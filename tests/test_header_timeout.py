"""The header deadline on both of uvicorn's HTTP protocols (httptools and h11), on a bare ASGI app: a stalled or
trickled header block gets a 408 and a closed connection at the deadline; keep-alive idle time is not header time."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import uvicorn

from vllm_whisper.entrypoints import header_timeout
from vllm_whisper.entrypoints.header_timeout import H11HeaderDeadline, header_deadline_protocol

DEADLINE = 1.0
PROTOCOLS = {"h11": H11HeaderDeadline}
if header_timeout.HttpToolsProtocol is not None:
    PROTOCOLS["httptools"] = header_timeout.HttpToolsHeaderDeadline


async def ok_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def serving(protocol: type):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(ok_app, log_level="warning", lifespan="off", timeout_keep_alive=5,
                            http=type(protocol.__name__, (protocol,), {"header_read_timeout": DEADLINE}))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def one_response(sock: socket.socket) -> bytes:
    """One whole response of ok_app (headers and its 2-byte body), however the bytes arrive."""
    reply = b""
    while not (b"\r\n\r\n" in reply and reply.endswith(b"ok")):
        data = sock.recv(4096)
        if not data:
            break
        reply += data
    return reply


def until_closed(sock: socket.socket) -> tuple[bytes, float]:
    started, reply = time.monotonic(), b""
    sock.settimeout(10)
    try:
        while data := sock.recv(4096):
            reply += data
    except ConnectionResetError:
        pass
    sock.close()
    return reply, time.monotonic() - started


@pytest.fixture(params=sorted(PROTOCOLS), scope="module")
def port(request):
    with serving(PROTOCOLS[request.param]) as bound:
        yield bound


def test_stalled_headers_get_a_408(port):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Half: ")
    reply, waited = until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408") and waited < 5, (reply, waited)


def test_trickled_headers_do_not_extend_the_deadline(port):
    sock = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()
    try:
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
    except OSError:  # closed by the server at the deadline
        pass
    reply, _ = until_closed(sock)
    assert time.monotonic() - started < DEADLINE + 5 and reply.startswith(b"HTTP/1.1 408"), reply


def test_complete_requests_and_keep_alive_idle_time_are_not_cut(port):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert one_response(sock).startswith(b"HTTP/1.1 200")
    time.sleep(DEADLINE + 0.5)  # idle on a keep-alive connection, within uvicorn's 5 s keep-alive
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert one_response(sock).startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET / HTTP/1.1\r\nHo")  # the next request's headers stall: a fresh deadline cuts it
    reply, waited = until_closed(sock)
    assert reply.startswith(b"HTTP/1.1 408") and DEADLINE - 0.2 <= waited < DEADLINE + 5, (reply, waited)


def test_the_timeout_must_be_positive():
    with pytest.raises(ValueError, match="header-read-timeout"):
        header_deadline_protocol(0)
