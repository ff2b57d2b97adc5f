"""Drain.until_expired: the pass-through that ends streams at the drain deadline must leave the stream it wraps
closable when its consumer is cancelled (a client disconnect), so the stream's clean-up (aborting the engine
request) runs at once."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import anyio

from vllm_whisper.entrypoints.drain import Drain


async def _slow_events(state: dict):
    try:
        yield "first"
        await asyncio.sleep(3600)  # the next event takes for ever: a long window still decoding
        yield "never"
    finally:
        state["closed"] = True


def test_cancelled_consumer_leaves_the_stream_closable():
    async def main() -> dict:
        state: dict = {}
        drain = Drain()
        received = []

        async def consume() -> None:
            async with aclosing(_slow_events(state)) as events, aclosing(drain.until_expired(events)) as drained:
                async for event in drained:
                    received.append(event)

        task = asyncio.create_task(consume())
        while not received:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the consumer now waits for the second event
        task.cancel()
        result = await asyncio.gather(task, return_exceptions=True)
        state["error"] = result[0]
        return state

    state = asyncio.run(main())
    assert state.get("closed") is True
    assert isinstance(state["error"], asyncio.CancelledError)  # not "aclose(): asynchronous generator is already running"


def test_cancelled_inside_an_anyio_scope_too():
    """Starlette cancels streaming responses through anyio cancel scopes, which re-cancel every await."""
    async def main() -> dict:
        state: dict = {}
        drain = Drain()

        async def consume() -> None:
            async with aclosing(_slow_events(state)) as events, aclosing(drain.until_expired(events)) as drained:
                async for _ in drained:
                    pass

        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await anyio.sleep(0.1)
            group.cancel_scope.cancel()
        return state

    assert asyncio.run(main()).get("closed") is True
