"""A service's own projection of ``catalog.accounts``: whose tokens a rotation superseded.

The catalog issues tokens and knows from its tables which generation is
current; every other service learns it from the compacted topic
``catalog.accounts``, whose events each carry an account's full state.  This
module is that projection, opt-in per service: its migrations
(``MIGRATIONS``), the consumer's ``apply`` handler (``consumer`` builds the
consumer), and ``revocations``, the cached check the HTTP layer runs on every
authenticated request.  ``wire`` does all of it for a service's composition.

Compaction keeps only the latest event per account and redelivery can bring
an older one after a newer one, so a generation is only ever raised: the
latest wins, never the last read.  Applying an event also sends ``NOTIFY
token_rotated`` (delivered at commit) so every replica's cache forgets it.

An account the projection does not know yet (its ``...Registered`` event is
still on its way) is trusted on its signed claim: the catalog signed that
token, so the account existed; refusing would lock out every new account
until the projection catches up.  What a lagging projection can miss is a
rotation, and that is bounded by its lag, as it would be for any known account.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaProducer

from shared.consumer import IdempotentConsumer, PermanentError
from shared.contracts import catalog_accounts
from shared.contracts.envelope import Envelope, Event, EventRegistry
from shared.db import Connection, Pool
from shared.http.api import Api, RevocationCheck
from shared.kafka import PLAINTEXT, KafkaSecurity
from shared.runtime import BackgroundLoop
from shared.service import Composition, Runtime
from shared.token_generations import TokenGenerations, announce_rotation

# Ensured by every service that reads it, so none depends on the catalog starting first.
TOPICS = (catalog_accounts.TOPIC,)
# For ``run_service(extra_migrations=[MIGRATIONS])``.
MIGRATIONS = ("account_generations", Path(__file__).parent / "sql" / "account_generations")


def account_of(event: Event) -> tuple[str, str, int]:
    """(role, subject, generation) an account event announces."""
    match event:
        case catalog_accounts.PartnerRegistered() | catalog_accounts.PartnerTokenRotated():
            return "partner", event.partner.partner_id, event.partner.token_generation
        case catalog_accounts.CustomerRegistered() | catalog_accounts.CustomerTokenRotated():
            return "customer", event.customer.customer_id, event.customer.token_generation
    raise PermanentError(f"{type(event).__name__} is not an account event")


async def apply(conn: Connection, _envelope: Envelope, event: Event) -> None:
    """The consumer's handler: raise the account's known generation, never lower it."""
    role, subject, generation = account_of(event)
    raised = await conn.fetchval(
        "INSERT INTO account_generations (role, subject, generation) VALUES ($1, $2, $3)"
        " ON CONFLICT (role, subject) DO UPDATE"
        " SET generation = EXCLUDED.generation, changed_at = now()"
        " WHERE account_generations.generation < EXCLUDED.generation"
        " RETURNING true",
        role,
        subject,
        generation,
    )
    if raised:
        await announce_rotation(conn, subject)


async def known_generation(conn: Connection, role: str, subject: str) -> int | None:
    generation: int | None = await conn.fetchval(
        "SELECT generation FROM account_generations WHERE role = $1 AND subject = $2",
        role,
        subject,
    )
    return generation


def revocations(pool: Pool, *, ttl_seconds: float = 30.0) -> TokenGenerations:
    """The cache whose ``superseded`` is the service's ``RevocationCheck``; run it as a loop."""
    return TokenGenerations(pool, known_generation, accept_unknown=True, ttl_seconds=ttl_seconds)


def consumer(
    *,
    service: str,
    bootstrap: str,
    topic_prefix: str,
    pool: Pool,
    producer: AIOKafkaProducer,
    security: KafkaSecurity = PLAINTEXT,
) -> IdempotentConsumer:
    """The consumer that keeps ``account_generations`` up to date in ``service``'s database."""
    return IdempotentConsumer(
        # The prefix is part of the group: deployments sharing a Kafka never share a group.
        name=f"{service}.account-generations",
        bootstrap=bootstrap,
        topics=[catalog_accounts.TOPIC.name],
        topic_prefix=topic_prefix,
        security=security,
        registry=EventRegistry(catalog_accounts.TOPIC.events),
        handler=apply,
        pool=pool,
        producer=producer,
    )


@dataclass
class AccountGenerations:
    """The projection wired into one service: its loops and its ``RevocationCheck``."""

    consumer: IdempotentConsumer
    cache: TokenGenerations

    @property
    def loops(self) -> list[BackgroundLoop]:
        return [self.consumer, self.cache]

    @property
    def revocations(self) -> RevocationCheck:
        return self.cache.superseded

    def composition(self, api: Api, loops: Sequence[BackgroundLoop] = ()) -> Composition:
        """A service's composition that refuses superseded tokens through this projection."""
        return Composition(api=api, loops=[*self.loops, *loops], revocations=self.revocations)


def wire(runtime: Runtime) -> AccountGenerations:
    settings = runtime.settings
    return AccountGenerations(
        consumer=consumer(
            service=runtime.name,
            bootstrap=settings.kafka_bootstrap,
            topic_prefix=settings.topic_prefix,
            pool=runtime.pool,
            producer=runtime.producer,
            security=settings.kafka_security(),
        ),
        cache=revocations(runtime.pool),
    )
