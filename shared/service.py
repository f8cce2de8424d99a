"""The composition every service shares: settings, pool, migrations, Kafka, HTTP.

A service's ``__main__`` only says what is its own (its migrations, topics,
API and background loops); connecting, migrating, relaying the outbox,
sweeping expired keys, serving and stopping in order happen here, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec
from aiokafka import AIOKafkaProducer

from shared import db, kafka, logs
from shared.contracts.envelope import Topic
from shared.http import idempotency
from shared.http.api import Api, RevocationCheck
from shared.http.app import DEFAULT_MAX_BODY_BYTES, create_app
from shared.migrations import PLUMBING_MIGRATIONS, migrate
from shared.outbox import OutboxRelay
from shared.runtime import BackgroundLoop, Periodic, serve
from shared.settings import Secret, load_settings, read_key_file
from shared.tokens import TokenVerifier

log = logging.getLogger(__name__)


class ServiceSettings(msgspec.Struct, kw_only=True):
    """What every service reads from the environment (see ``shared.settings``)."""

    database_url: str
    http_port: int
    operator_token: Secret
    token_public_key_file: Path
    http_host: str = "127.0.0.1"
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = ""
    log_level: str = "INFO"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    db_pool_size: int = 10
    shutdown_timeout_seconds: float = 20.0
    startup_timeout_seconds: float = 60.0


@dataclass
class Runtime:
    """The connections a service's own code is built from."""

    name: str
    settings: ServiceSettings
    pool: db.Pool
    producer: AIOKafkaProducer
    verifier: TokenVerifier


@dataclass
class Composition:
    api: Api
    loops: list[BackgroundLoop] = field(default_factory=list)
    revocations: RevocationCheck | None = None


Compose = Callable[[Runtime], Awaitable[Composition]]
S = TypeVar("S", bound=ServiceSettings)


async def _retry_until(what: str, deadline: float, attempt: Callable[[], Awaitable[None]]) -> None:
    """Dependencies may start after us (compose, systemd): wait for them, then give up."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + deadline
    while True:
        try:
            await attempt()
            return
        except Exception as exc:
            if loop.time() >= give_up_at:
                raise RuntimeError(f"{what} not reachable after {deadline:.0f}s") from exc
            log.warning("waiting for %s", what, extra={"error": repr(exc)})
            await asyncio.sleep(1.0)


async def run_service(
    *,
    name: str,
    settings: ServiceSettings,
    migrations: Path,
    topics: Sequence[Topic],
    compose: Compose,
    stop: asyncio.Event | None = None,
    extra_migrations: Sequence[tuple[str, Path]] = (),
) -> None:
    """``extra_migrations``: opt-in shared tables, e.g. ``shared.account_generations``."""
    logs.configure_logging(name, settings.log_level)
    verifier = TokenVerifier(read_key_file(settings.token_public_key_file), settings.operator_token)
    pools: list[db.Pool] = []

    async def connect() -> None:
        pools.append(await db.create_pool(settings.database_url, max_size=settings.db_pool_size))

    await _retry_until("PostgreSQL", settings.startup_timeout_seconds, connect)
    pool = pools[0]
    producer = kafka.new_producer(settings.kafka_bootstrap, client_id=name)
    try:
        async with pool.acquire() as conn:
            applied = await migrate(
                conn, [("plumbing", PLUMBING_MIGRATIONS), *extra_migrations, (name, migrations)]
            )
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
        await _retry_until("Kafka", settings.startup_timeout_seconds, producer.start)
        await kafka.ensure_topics(
            settings.kafka_bootstrap, kafka.topic_specs(topics, settings.topic_prefix)
        )
        runtime = Runtime(
            name=name, settings=settings, pool=pool, producer=producer, verifier=verifier
        )
        composition = await compose(runtime)
        app = create_app(
            api=composition.api,
            pool=pool,
            verifier=verifier,
            readiness=[
                ("database", lambda: db.database_reachable(pool)),
                ("kafka", lambda: kafka.kafka_reachable(producer)),
            ],
            max_body_bytes=settings.max_body_bytes,
            **({"revocations": composition.revocations} if composition.revocations else {}),
        )
        loops: list[BackgroundLoop] = [
            OutboxRelay(pool, producer, topic_prefix=settings.topic_prefix),
            Periodic("sweep-idempotency-keys", 3600, lambda: idempotency.sweep_expired(pool)),
            *composition.loops,
        ]
        await serve(
            app,
            host=settings.http_host,
            port=settings.http_port,
            loops=loops,
            shutdown_timeout=settings.shutdown_timeout_seconds,
            stop=stop,
        )
    finally:
        await producer.stop()
        await pool.close()
        log.info("stopped")


def main(
    name: str,
    settings_type: type[S],
    *,
    migrations: Path,
    topics: Sequence[Topic],
    composer: Callable[[S], Compose],
    extra_migrations: Sequence[tuple[str, Path]] = (),
) -> None:
    """Entry point of ``python -m services.<name>``."""
    settings = load_settings(settings_type, name)
    asyncio.run(
        run_service(
            name=name,
            settings=settings,
            migrations=migrations,
            topics=topics,
            compose=composer(settings),
            extra_migrations=extra_migrations,
        )
    )
