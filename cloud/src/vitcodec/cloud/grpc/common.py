"""Helpers shared by the gRPC servicers: error mapping through the one error table, and bounded concurrent
processing of a request stream."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from ..errors import describe, is_known

log = logging.getLogger("vitcodec.cloud.grpc")

T = TypeVar("T")
R = TypeVar("R")


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    info = describe(exc)
    if not is_known(exc):
        log.error("unhandled error", exc_info=exc)
    await context.abort(info.grpc_code, info.message)


def unary(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Decorate a unary servicer method: domain errors become the table's gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await abort(context, exc)

    return wrapper


_DONE = object()


async def concurrent_stream(requests: AsyncIterator[T], handle: Callable[[int, T], Awaitable[R]],
                            limit: int) -> AsyncIterator[R]:
    """Run `handle(index, request)` for every request of a stream, at most `limit` at a time (so one stream's
    requests can share batches), and yield the results as they complete. `handle` must not raise."""
    out: asyncio.Queue = asyncio.Queue()
    slots = asyncio.Semaphore(limit)

    async def run(index: int, request: T) -> None:
        try:
            await out.put(await handle(index, request))
        finally:
            slots.release()

    async def read() -> None:
        tasks: set[asyncio.Task] = set()
        try:
            index = 0
            async for request in requests:
                await slots.acquire()
                task = asyncio.create_task(run(index, request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                index += 1
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await out.put(_DONE)

    reader = asyncio.create_task(read())
    try:
        while True:
            item = await out.get()
            if item is _DONE:
                break
            yield item
        await reader  # surfaces a failure of the request stream itself
    finally:
        if not reader.done():
            reader.cancel()
