"""Running a service: background loops, signals and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

import uvloop
from aiohttp import web

from shared.http.api import TIMEOUTS
from shared.http.server import FrontDoorRunner
from shared.retry import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a process's top coroutine on uvloop: every service and every bench baseline.

    The default asyncio loop spent about a fifth of an order placement's CPU in
    its own Python (the selector, callbacks, transports); uvloop does that in C.
    A bench runs its bare baselines and its load generator through here too, so
    a ratio to them compares code, not event loops.
    """
    return uvloop.run(main)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop ``run`` uses, for code that must hand a loop over (``aiohttp.web.run_app``)."""
    return uvloop.new_event_loop()


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
    """Runs until ``stop()``; returning or raising before that means it died."""

    async def run(self) -> None: ...
    def stop(self) -> None: ...


class BackgroundLoopDied(Exception):
    """A background loop ended while the service was meant to be running.

    The service stops and its process exits non-zero: a relay, consumer or
    timer loop that is gone leaves a process that answers HTTP but does none
    of its work, and only a supervisor's restart brings it back.
    """


# A pass that failed because the database or broker is unreachable is tried again
# soon, forever: the work waits in the database, so the failure delays it and
# loses nothing.  Any other failure is a bug or a wedged state: after
# ``max_attempts`` of them in a row the loop dies, and with it the process.
PASS_RETRY = RetryPolicy(max_attempts=5, first_backoff=0.5, max_backoff=10.0)


class PollingLoop:
    """Runs ``one_pass`` again and again until stopped; each pass says how long to nap.

    ``wake()`` cuts the current nap short, or the next one when it comes during
    a pass: the flag is cleared just before a pass starts, never after, so a
    wake-up that arrives while a pass runs is kept rather than erased.  A pass
    that raises is logged and retried after ``retry``'s backoff: without limit
    when the error is one of ``transient``, else up to ``retry.max_attempts``
    failures in a row, after which ``run`` raises (see ``BackgroundLoopDied``).
    """

    def __init__(
        self,
        name: str,
        one_pass: Callable[[], Awaitable[float]],
        *,
        transient: tuple[type[BaseException], ...],
        retry: RetryPolicy = PASS_RETRY,
    ) -> None:
        self.name = name
        self._one_pass = one_pass
        self._transient = transient
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
        persistent_failures = 0
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                pause = await self._one_pass()
                failures = persistent_failures = 0
            except self._transient:
                failures += 1
                log.warning("pass failed, retrying", extra={"loop": self.name}, exc_info=True)
                pause = self._retry.backoff(failures)
            except Exception:
                failures += 1
                persistent_failures += 1
                if persistent_failures >= self._retry.max_attempts:
                    raise
                log.exception("pass failed, retrying", extra={"loop": self.name})
                pause = self._retry.backoff(failures)
            if pause > 0:
                await sleep_or_stop(self._wake, pause)


def periodic(
    name: str,
    interval: float,
    action: Callable[[], Awaitable[object]],
    *,
    transient: tuple[type[BaseException], ...],
) -> PollingLoop:
    """``action`` every ``interval`` seconds, failing the way every loop fails.

    A housekeeping pass (sweeping keys, pruning) that keeps failing for reasons
    other than an outage is a broken service like any other: it dies, and the
    process with it, rather than logging an error every hour for ever.
    """

    async def one_pass() -> float:
        await action()
        return interval

    return PollingLoop(name, one_pass, transient=transient)


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
    its batch); the caller closes Kafka and the pool after this returns.  If a
    background loop ends on its own, everything stops the same way and
    ``BackgroundLoopDied`` is raised.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # No access log: it would be one more place a header or a key could end up.
    runner = FrontDoorRunner(
        app, timeouts=app[TIMEOUTS], shutdown_timeout=shutdown_timeout, access_log=None
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    tasks = {
        asyncio.create_task(background.run(), name=type(background).__name__): background
        for background in loops
    }
    log.info("serving", extra={"host": host, "port": port})
    died: list[asyncio.Task[None]] = []
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        died = [task for task in tasks if task.done()]
        for task in died:
            cause = None if task.cancelled() else task.exception()
            log.error("background loop died", extra={"loop": task.get_name()}, exc_info=cause)
    finally:
        waiter.cancel()
        log.info("stopping")
        await runner.cleanup()
        for background in loops:
            background.stop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if task in died:
                continue
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("background loop failed while stopping", exc_info=result)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    if died:
        raise BackgroundLoopDied(", ".join(task.get_name() for task in died))
