"""Several async streams read as one, for a call that runs several engine requests at once
(completions with a list of prompts)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import TypeVar

T = TypeVar("T")


class _End:
    """A stream ended; `error` is what it raised, if anything."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


async def merge(streams: Sequence[AsyncGenerator[T, None]]) -> AsyncGenerator[tuple[int, T], None]:
    """The items of `streams` as they come, each with its stream's position. The first error
    of any stream is raised (the others are closed); closing the merge closes every stream."""
    queue: asyncio.Queue[tuple[int, T | _End]] = asyncio.Queue(maxsize=max(len(streams), 1))

    async def pump(position: int, stream: AsyncGenerator[T, None]) -> None:
        try:
            async with aclosing(stream):
                async for item in stream:
                    await queue.put((position, item))
        except Exception as exc:
            await queue.put((position, _End(exc)))
            return
        await queue.put((position, _End()))

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            position, item = await queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                running -= 1
                continue
            yield position, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
