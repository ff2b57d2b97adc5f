"""Graceful shutdown: on SIGTERM (or SIGINT) stop accepting work, let running requests and streams finish for up to
--shutdown-timeout seconds, end the streams still running just before that with a final error event, close
realtime sessions with an error event that says why, then exit 0.

uvicorn closes the listening socket (new connections are refused) and waits for open connections; this module
adds what it does not: a 503 for requests that arrive on kept-alive connections, the final events, and an exit
status of 0 (uvicorn re-raises the signal after its shutdown, which would end the process with -15).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import anyio
import uvicorn

logger = logging.getLogger(__name__)
T = TypeVar("T")
FINAL_EVENT_MARGIN_S = 1.0  # streams still running this long before the deadline get their final event


class ServerDraining(Exception):
    """The server is shutting down and this stream ran out of time."""


@dataclass
class Drain:
    """Shared by the routes: whether the server drains, and an event set when running streams must end."""

    timeout: float = 30.0
    started: bool = False
    expired: asyncio.Event = field(default_factory=asyncio.Event)
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # e.g. realtime sessions' goodbyes

    def begin(self) -> None:
        if self.started:
            return
        self.started = True
        logger.info("draining: refusing new requests, waiting up to %g s for running ones", self.timeout)
        loop = asyncio.get_running_loop()
        loop.call_later(max(0.0, self.timeout - FINAL_EVENT_MARGIN_S), self.expired.set)
        for callback in list(self.on_start):
            loop.create_task(callback())

    async def until_expired(self, events: AsyncIterator[T]) -> AsyncIterator[T]:
        """Pass `events` through; raise ServerDraining if the drain deadline comes first."""
        iterator = events.__aiter__()
        expired = asyncio.ensure_future(self.expired.wait())
        upcoming: asyncio.Future | None = None
        try:
            while True:
                upcoming = asyncio.ensure_future(iterator.__anext__())
                await asyncio.wait({upcoming, expired}, return_when=asyncio.FIRST_COMPLETED)
                if not upcoming.done():
                    upcoming.cancel()
                    await asyncio.gather(upcoming, return_exceptions=True)
                    raise ServerDraining("the server is shutting down; retry on another replica or later")
                try:
                    yield upcoming.result()
                except StopAsyncIteration:
                    return
        finally:
            expired.cancel()
            if upcoming is not None and not upcoming.done():
                # The consumer went away (a client disconnect cancels it) while the next event was being awaited on
                # its own task: cancel that too and wait for it, so `events` is no longer running when the caller
                # closes it (its clean-up aborts the engine request). Shielded: starlette's cancel scopes re-cancel.
                upcoming.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait({upcoming})


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain started from its signal handler."""

    def __init__(self, config: uvicorn.Config, drain: Drain):
        super().__init__(config)
        self.drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        if self._loop is not None and not self.drain.started:
            self._loop.call_soon_threadsafe(self.drain.begin)
        super().handle_exit(sig, frame)


def run_draining(config: uvicorn.Config, drain: Drain, sockets: list[socket.socket] | None = None) -> None:
    """Serve (on `sockets` when given, already bound) until a signal, drain, and return normally (so the process
    can exit 0)."""
    ignored = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        DrainingServer(config, drain).run(sockets=sockets)
    finally:
        for sig, handler in ignored.items():
            signal.signal(sig, handler)
