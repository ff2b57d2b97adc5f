"""A deadline for reading a request's headers, which uvicorn does not have: a client that opens a connection and
trickles (or never finishes) its request line and headers is answered 408 and disconnected after
`--header-read-timeout` seconds, so slowloris clients cannot hold connections for ever. The deadline covers the
whole header block (trickling bytes does not extend it), as Node's `headersTimeout` does; bodies have their own
limit (`--upload-read-timeout`)."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional for uvicorn; h11 is always there
    HttpToolsProtocol = None

REQUEST_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                            b"content-length: 36\r\nconnection: close\r\n\r\nrequest headers not received in time")


class _HeaderDeadline:
    """Mixin for a uvicorn HTTP protocol: a timer armed when a connection opens and when a pipelined or keep-alive
    request begins, cancelled once that request's headers are complete."""

    header_read_timeout: float = 30.0
    _header_timer: asyncio.TimerHandle | None = None

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_timer = self.loop.call_later(self.header_read_timeout, self._header_deadline_passed)

    def _cancel_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(REQUEST_TIMEOUT_RESPONSE)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)


if HttpToolsProtocol is not None:
    class HttpToolsHeaderDeadline(_HeaderDeadline, HttpToolsProtocol):
        """uvicorn's httptools protocol with the header deadline."""

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:  # a keep-alive connection's next request: a fresh deadline
                self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._cancel_header_deadline()
            super().on_headers_complete()


class H11HeaderDeadline(_HeaderDeadline, H11Protocol):
    """uvicorn's h11 protocol with the header deadline (used when httptools is not installed)."""

    def data_received(self, data: bytes) -> None:
        waiting_for_headers = self.cycle is None or self.cycle.response_complete
        if waiting_for_headers and self._header_timer is None:  # the next request on a keep-alive connection
            self._arm_header_deadline()
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete or self.transport.is_closing():
            self._cancel_header_deadline()  # headers parsed (a request cycle started) or the connection is ending


def header_deadline_protocol(timeout: float) -> type[asyncio.Protocol]:
    """The HTTP protocol class for uvicorn.Config(http=...) with a `timeout`-second header deadline."""
    if timeout <= 0:
        raise ValueError(f"--header-read-timeout must be positive, got {timeout}")
    base = HttpToolsHeaderDeadline if HttpToolsProtocol is not None else H11HeaderDeadline
    return type(base.__name__, (base,), {"header_read_timeout": timeout})
