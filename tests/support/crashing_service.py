"""``python -m tests.support.crashing_service <crash|run>``: a service with one extra loop.

Runs ``shared.service.main`` like a real service (settings from ``CRASHING_*``
environment variables, no migrations of its own, no topics).  With ``crash``
its loop fails as soon as it starts; with ``run`` it runs until stopped.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from shared.http.api import Api
from shared.service import Compose, Composition, Runtime, ServiceSettings, main


class Doomed:
    def __init__(self, crash: bool) -> None:
        self._crash = crash
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        if self._crash:
            raise RuntimeError("the loop's work failed for good")
        await self._stopping.wait()


def composer(crash: bool) -> Compose:
    async def compose(_: Runtime) -> Composition:
        return Composition(api=Api("crashing"), loops=[Doomed(crash)])

    return compose


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as no_migrations:
        main(
            "crashing",
            ServiceSettings,
            migrations=Path(no_migrations),
            topics=(),
            composer=lambda _: composer(sys.argv[1] == "crash"),
        )
