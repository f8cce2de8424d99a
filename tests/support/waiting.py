"""Wait on a condition with a deadline, never on a guess of how long something takes."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


@overload
async def wait_for(
    condition: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = ...,  # noqa: ASYNC109 - a deadline for the polling, not for I/O
    interval: float = ...,
    message: str,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float = ...,  # noqa: ASYNC109 - a deadline for the polling, not for I/O
    interval: float = ...,
    message: str,
    ignore: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def wait_for(
    condition: Callable[[], object],
    *,
    timeout: float = 20,  # noqa: ASYNC109 - a deadline for the polling, not for I/O
    interval: float = 0.05,
    message: str,
    ignore: tuple[type[BaseException], ...] = (),
) -> object:
    """Poll ``condition`` (sync or async) until it returns something truthy; return that.

    Raises ``AssertionError(message)`` if it has not within ``timeout`` seconds.
    Exceptions of the types in ``ignore`` count as "not yet" (e.g. a connection
    refused while a server starts); the last one is named in the failure.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: str = "never asked"
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
        except ignore as exc:
            last = f"last attempt raised {exc!r}"
        else:
            if value:
                return value
            last = f"last value {value!r}"
        if loop.time() >= deadline:
            raise AssertionError(f"{message} (not within {timeout:g}s; {last})")
        await asyncio.sleep(interval)
