"""Ports for servers that tests start in other processes come from below the kernel's ephemeral range, where no
outbound connection or port-0 bind can take them before the server binds (a Ray Serve proxy lost its port that way)."""

from __future__ import annotations

import socket

from vllm_whisper.testing import ports


def test_port_is_free_and_below_the_ephemeral_range():
    start = ports.ephemeral_start()
    for _ in range(20):
        port = ports.free_port()
        assert ports.LOWEST_PORT <= port < start
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # still free


def test_a_taken_port_is_skipped(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(ports, "LOWEST_PORT", port)
        monkeypatch.setattr(ports, "ephemeral_start", lambda: port + 2)  # room for `port` and one more
        assert all(ports.free_port() != port for _ in range(10))


def test_without_room_below_the_ephemeral_range_an_ephemeral_port_is_used(monkeypatch):
    monkeypatch.setattr(ports, "ephemeral_start", lambda: 1024)
    port = ports.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
