"""A real service, started in-process with ``run_service`` and stopped after the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from shared.contracts.envelope import Topic
from shared.service import Compose, ServiceSettings, run_service
from tests.support.waiting import wait_for


@asynccontextmanager
async def running_service(
    name: str,
    settings: ServiceSettings,
    *,
    migrations: Path,
    topics: Sequence[Topic],
    compose: Compose,
    extra_migrations: Sequence[tuple[str, Path]] = (),
) -> AsyncIterator[str]:
    """Yields the service's base URL once ``/readyz`` answers 200."""
    stop = asyncio.Event()
    service = asyncio.create_task(
        run_service(
            name=name,
            settings=settings,
            migrations=migrations,
            topics=topics,
            compose=compose,
            stop=stop,
            extra_migrations=extra_migrations,
        ),
        name=f"{name}-under-test",
    )
    base_url = f"http://127.0.0.1:{settings.http_port}"
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                if service.done():
                    service.result()  # a failed start fails the caller with its cause
                    raise AssertionError(f"{name} stopped while starting")
                async with session.get(f"{base_url}/readyz") as response:
                    return response.status == 200

            await wait_for(
                ready,
                timeout=60,
                message=f"{name} did not become ready",
                ignore=(aiohttp.ClientConnectionError,),
            )
        yield base_url
    finally:
        stop.set()
        await asyncio.wait_for(service, timeout=30)
