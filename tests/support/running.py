"""A real service, started in-process with ``run_service`` and stopped after the test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec

from deploy.local.infra import free_port
from shared.contracts.envelope import Topic
from shared.service import Compose, ServiceSettings, run_service
from shared.settings import Secret
from tests.support.infra import REPO_ROOT, Infra
from tests.support.keys import TokenKeys
from tests.support.waiting import wait_for

S = TypeVar("S", bound=ServiceSettings)


def settings_of(settings_type: type[S], values: Mapping[str, Any]) -> S:
    """Settings from ``values``, leaving out what this version of the code does not know.

    So tests that replay a bug (tests/security) also run, and fail for that bug, on the
    code from before its fix, whose settings lack the fix's knobs.
    """
    known = {f.name for f in msgspec.structs.fields(settings_type)}
    return settings_type(**{k: v for k, v in values.items() if k in known})


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
            **({"extra_migrations": extra_migrations} if extra_migrations else {}),
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


@asynccontextmanager
async def running_orders(
    infra: Infra, keys: TokenKeys, database_url: str, **overrides: Any
) -> AsyncIterator[str]:
    """The orders service as it ships, on ``database_url``; yields its base URL."""
    from services.orders import __main__ as orders

    values: dict[str, Any] = {
        "database_url": database_url,
        "http_port": free_port(),
        "operator_token": Secret(keys.operator_token),
        "token_public_key_file": keys.public_key_file,
        "kafka_bootstrap": infra.kafka_bootstrap,
        "topic_prefix": f"t{uuid.uuid4().hex[:10]}.",
        "shutdown_timeout_seconds": 5,
        **overrides,
    }
    settings = settings_of(orders.OrdersSettings, values)
    async with running_service(
        "orders",
        settings,
        migrations=REPO_ROOT / "services" / "orders" / "migrations",
        # Both arrived with the account projection (issue 6); getattr keeps older code runnable.
        topics=getattr(orders, "TOPICS", ()),
        compose=orders.compose,
        extra_migrations=getattr(orders, "EXTRA_MIGRATIONS", ()),
    ) as base_url:
        yield base_url
