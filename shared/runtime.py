"""Running a service: background loops, signals and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from aiohttp import web

from shared.retry import RetryPolicy

log = logging.getLogger(__name__)


async def sleep_or_stop(stopping: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` unless ``stopping`` is set first; True means stop now.

    The one way a background loop naps: it wakes at once on shutdown, so a
    graceful stop never waits out a backoff.
    """
    if stopping.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)
    return stopping.is_set()


class BackgroundLoop(Protocol):
    async def run(self) -> None: ...
    def stop(self) -> None: ...


# A pass that failed (database or broker unreachable) is tried again soon, forever:
# the work waits in the database, so a failure delays it and loses nothing.
PASS_RETRY = RetryPolicy(first_backoff=0.5, max_backoff=10.0)


class PollingLoop:
    """Runs ``one_pass`` again and again until stopped; each pass says how long to nap.

    ``wake()`` cuts the current nap short, or the next one when it comes during
    a pass: the flag is cleared just before a pass starts, never after, so a
    wake-up that arrives while a pass runs is kept rather than erased.  A pass
    that raises is logged and retried after ``retry``'s backoff.
    """

    def __init__(
        self,
        name: str,
        one_pass: Callable[[], Awaitable[float]],
        *,
        retry: RetryPolicy = PASS_RETRY,
    ) -> None:
        self.name = name
        self._one_pass = one_pass
        self._retry = retry
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                pause = await self._one_pass()
                failures = 0
            except Exception:
                failures += 1
                log.exception("pass failed, retrying", extra={"loop": self.name})
                pause = self._retry.backoff(failures)
            if pause > 0:
                await sleep_or_stop(self._wake, pause)


class Periodic:
    """Runs ``action`` every ``interval`` seconds until stopped; failures are logged."""

    def __init__(self, name: str, interval: float, action: Callable[[], Awaitable[object]]) -> None:
        self.name = name
        self._interval = interval
        self._action = action
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._action()
            except Exception:
                log.exception("periodic task failed", extra={"task": self.name})
            await sleep_or_stop(self._stopping, self._interval)


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    loops: Sequence[BackgroundLoop] = (),
    shutdown_timeout: float = 20.0,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then stop in the safe order.

    HTTP stops accepting first and in-flight requests finish; then the
    background loops stop (consumers commit what they applied, the relay ends
    its batch); the caller closes Kafka and the pool after this returns.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    tasks = [asyncio.create_task(background.run()) for background in loops]
    log.info("serving", extra={"host": host, "port": port})
    try:
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done() and task.exception() is not None:
                log.error("background loop died", exc_info=task.exception())
    finally:
        log.info("stopping")
        await runner.cleanup()
        for background in loops:
            background.stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("background loop failed while stopping", exc_info=result)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
