"""The composition every service shares: settings, pool, migrations, Kafka, HTTP.

A service's ``__main__`` only says what is its own (its migrations, topics,
API and background loops); connecting, migrating, relaying the outbox,
sweeping expired keys, serving and stopping in order happen here, once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import asyncpg
from aiokafka import AIOKafkaProducer

from shared import db, kafka, logs, retention
from shared.contracts.envelope import Topic
from shared.db import TRANSIENT_DB_ERRORS
from shared.http import idempotency
from shared.http.api import Api, RevocationCheck
from shared.http.app import (
    DEFAULT_FAILED_AUTH_RATE_LIMIT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PRINCIPAL_RATE_LIMIT,
    DEFAULT_RATE_LIMIT,
    DEFAULT_TIMEOUTS,
    create_app,
)
from shared.http.idempotency import KeySecret
from shared.http.rate_limit import RateLimit
from shared.http.server import Timeouts
from shared.migrations import PLUMBING_MIGRATIONS, migrate
from shared.outbox import OutboxRelay
from shared.retry import RetryPolicy
from shared.runtime import BackgroundLoop, BackgroundLoopDied, periodic, run, serve
from shared.settings import Secret, load_settings, read_key_file
from shared.tokens import TokenVerifier

log = logging.getLogger(__name__)


class ServiceSettings(kafka.KafkaSettings, kw_only=True):
    """What every service reads from the environment (see ``shared.settings``)."""

    database_url: str
    http_port: int
    operator_token: Secret
    token_public_key_file: Path
    http_host: str = "127.0.0.1"
    topic_prefix: str = ""
    log_level: str = "INFO"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    db_pool_size: int = 10
    # Opened at start and kept; the rest are opened when load needs them, and a
    # request that waits for one pays a connect (and first statements) in its latency.
    db_pool_min_size: int = 2
    shutdown_timeout_seconds: float = 20.0
    startup_timeout_seconds: float = 60.0
    # Sent outbox rows are kept this long (see ``shared.retention``).
    outbox_retention_hours: float = 168.0
    # For consumers that opt in; must exceed their topics' retention.ms.
    processed_events_retention_hours: float = 336.0
    # The front door; README "Front door" says what each one means.
    public_rate_limit_per_minute: float = DEFAULT_RATE_LIMIT.per_minute
    public_rate_limit_burst: int = DEFAULT_RATE_LIMIT.burst
    principal_rate_limit_per_minute: float = DEFAULT_PRINCIPAL_RATE_LIMIT.per_minute
    principal_rate_limit_burst: int = DEFAULT_PRINCIPAL_RATE_LIMIT.burst
    failed_auth_rate_limit_per_minute: float = DEFAULT_FAILED_AUTH_RATE_LIMIT.per_minute
    failed_auth_rate_limit_burst: int = DEFAULT_FAILED_AUTH_RATE_LIMIT.burst
    http_header_timeout_seconds: float = DEFAULT_TIMEOUTS.header_seconds
    http_body_timeout_seconds: float = DEFAULT_TIMEOUTS.body_seconds
    idempotency_secret: Secret | None = None


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
    # Consumers on topics Kafka deletes by time, whose dedupe rows may be pruned.
    pruned_consumers: Sequence[str] = ()


Compose = Callable[[Runtime], Awaitable[Composition]]
S = TypeVar("S", bound=ServiceSettings)


# Waiting for a dependency at start-up: soon at first, then every few seconds.
_STARTUP_RETRY = RetryPolicy(first_backoff=0.25, max_backoff=2.0)


async def _retry_until(what: str, deadline: float, attempt: Callable[[], Awaitable[None]]) -> None:
    """Dependencies may start after us (compose, systemd): wait for them, then give up."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + deadline
    tries = 0
    while True:
        tries += 1
        try:
            await attempt()
            return
        except Exception as exc:
            if loop.time() >= give_up_at:
                raise RuntimeError(f"{what} not reachable after {deadline:.0f}s") from exc
            log.warning("waiting for %s", what, extra={"error": repr(exc)})
            await asyncio.sleep(_STARTUP_RETRY.backoff(tries))


async def _prune(pool: db.Pool, settings: ServiceSettings, consumers: Sequence[str]) -> None:
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await retention.prune_sent_events(
            conn, sent_before=now - timedelta(hours=settings.outbox_retention_hours)
        )
        await retention.prune_processed_events(
            conn,
            consumers=consumers,
            processed_before=now - timedelta(hours=settings.processed_events_retention_hours),
        )


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
        pools.append(
            await db.create_pool(
                settings.database_url,
                min_size=min(settings.db_pool_min_size, settings.db_pool_size),
                max_size=settings.db_pool_size,
            )
        )

    await _retry_until("PostgreSQL", settings.startup_timeout_seconds, connect)
    pool = pools[0]
    security = settings.kafka_security()
    producer = kafka.new_producer(settings.kafka_bootstrap, client_id=name, security=security)
    try:
        # Not a pooled connection: the pool's command timeout would cancel an
        # index build on a big table, which takes as long as it takes.
        migrating = await asyncpg.connect(settings.database_url)
        try:
            applied = await migrate(
                migrating,
                [("plumbing", PLUMBING_MIGRATIONS), *extra_migrations, (name, migrations)],
            )
        finally:
            await migrating.close()
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
        await _retry_until("Kafka", settings.startup_timeout_seconds, producer.start)
        if settings.kafka_create_topics:
            await kafka.ensure_topics(
                settings.kafka_bootstrap, kafka.topic_specs(topics, settings.topic_prefix), security
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
            key_secret=KeySecret.configured(settings.idempotency_secret, settings.operator_token),
            public_rate_limit=RateLimit(
                settings.public_rate_limit_per_minute, settings.public_rate_limit_burst
            ),
            principal_rate_limit=RateLimit(
                settings.principal_rate_limit_per_minute,
                settings.principal_rate_limit_burst,
                per="caller",
            ),
            failed_auth_rate_limit=RateLimit(
                settings.failed_auth_rate_limit_per_minute, settings.failed_auth_rate_limit_burst
            ),
            timeouts=Timeouts(
                settings.http_header_timeout_seconds, settings.http_body_timeout_seconds
            ),
            **({"revocations": composition.revocations} if composition.revocations else {}),
        )
        loops: list[BackgroundLoop] = [
            OutboxRelay(
                pool,
                producer,
                topic_prefix=settings.topic_prefix,
                fresh_producer=lambda: kafka.new_producer(
                    settings.kafka_bootstrap, client_id=f"{name}-relay", security=security
                ),
            ),
            periodic(
                "sweep-idempotency-keys",
                3600,
                lambda: idempotency.sweep_expired(pool),
                transient=TRANSIENT_DB_ERRORS,
            ),
            periodic(
                "prune-plumbing",
                3600,
                lambda: _prune(pool, settings, composition.pruned_consumers),
                transient=TRANSIENT_DB_ERRORS,
            ),
            *composition.loops,
        ]
        # Everything built so far (modules, the app, clients) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it
        # in the middle of a request, which showed as tail latency.
        gc.freeze()
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
    """Entry point of ``python -m services.<name>``; exits 1 when a background loop died."""
    settings = load_settings(settings_type, name)
    try:
        run(
            run_service(
                name=name,
                settings=settings,
                migrations=migrations,
                topics=topics,
                compose=composer(settings),
                extra_migrations=extra_migrations,
            )
        )
    except BackgroundLoopDied:
        # Logged with its cause already; a supervisor restarts the service.
        sys.exit(1)
