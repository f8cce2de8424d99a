"""Settlement against real PostgreSQL and Kafka.

* ``ledger_pool``: a fresh, migrated settlement database (no service), for
  the ledger's own rules and the booking of event chunks called directly.
* ``settlement``: the real service, run in-process once per test module on a
  database and a topic namespace of its own; tests publish order events to
  its orders topic the way the orders service would, and call its HTTP API.

Every settlement database a test touched must have a zero trial balance per
currency when the test ends (``trial_balance_stays_zero``, autouse).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio

from deploy.local.infra import free_port
from services.settlement.__main__ import (
    EXTRA_MIGRATIONS,
    MIGRATIONS,
    TOPICS,
    SettlementSettings,
    composer,
)
from services.settlement.consumers import CONSUMER, OrderEventBooker
from shared import db
from shared.consumer import Delivery
from shared.contracts import orders
from shared.contracts.envelope import Envelope, encode_envelope
from shared.migrations import PLUMBING_MIGRATIONS, migrate
from shared.outbox import kafka_headers
from shared.settings import Secret
from shared.tokens import TokenIssuer
from tests.integration.settlement.order_events import OrderEvent
from tests.support.infra import Infra, temporary_database
from tests.support.keys import TokenKeys
from tests.support.running import running_service
from tests.support.waiting import wait_for

_NO_BODY = object()
# The settlement databases of this session, checked after every test.
_LEDGERS: set[str] = set()


async def migrate_ledger(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, [("plumbing", PLUMBING_MIGRATIONS), ("settlement", MIGRATIONS)])
    finally:
        await conn.close()


async def trial_balance_totals(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT currency, sum(amount)::bigint AS total FROM postings GROUP BY currency"
        )
    finally:
        await conn.close()
    return {row["currency"]: row["total"] for row in rows}


# The balances the ledger keeps, and the same sums recomputed from the postings.
_KEPT_BALANCES = (
    "SELECT account, partner_id, currency, balance FROM account_balances",
    "SELECT * FROM order_balances",
)
_RECOMPUTED_BALANCES = (
    "SELECT account, partner_id, currency, sum(amount)::bigint AS balance FROM postings"
    " GROUP BY account, partner_id, currency",
    "SELECT order_id,"
    + ",".join(
        f" coalesce(sum(amount) FILTER (WHERE account = '{account}'), 0)::bigint AS {account}"
        for account in (
            "customer_receivables", "fee_revenue", "partner_pending", "partner_available",
            "payouts_in_transit", "cash",
        )
    )
    + " FROM postings WHERE order_id IS NOT NULL GROUP BY order_id",
)  # fmt: skip


async def assert_balances_follow_postings(dsn: str) -> None:
    """What the ledger keeps per account and per order is exactly what its postings sum to."""
    conn = await asyncpg.connect(dsn)
    try:
        for kept, recomputed in zip(_KEPT_BALANCES, _RECOMPUTED_BALANCES, strict=True):
            have = sorted(map(tuple, await conn.fetch(kept)), key=repr)
            want = sorted(map(tuple, await conn.fetch(recomputed)), key=repr)
            assert have == want, f"kept balances differ from their postings: {kept}"
    finally:
        await conn.close()


async def assert_trial_balance_zero(dsn: str) -> None:
    totals = await trial_balance_totals(dsn)
    assert all(total == 0 for total in totals.values()), f"trial balance off: {totals}"
    await assert_balances_follow_postings(dsn)


@pytest_asyncio.fixture(autouse=True)
async def trial_balance_stays_zero() -> AsyncIterator[None]:
    """After every test, each module's running ledger still balances."""
    yield
    for dsn in sorted(_LEDGERS):
        await assert_trial_balance_zero(dsn)


@pytest.fixture
async def ledger_pool(fresh_database: str) -> AsyncIterator[db.Pool]:
    await migrate_ledger(fresh_database)
    pool = await db.create_pool(fresh_database, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()
    # Checked here: the database is dropped before autouse fixtures end.
    await assert_trial_balance_zero(fresh_database)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]

    def expect(self, status: int) -> Any:
        assert self.status == status, f"expected {status}, got {self.status}: {self.body}"
        return self.body


@dataclass
class Settlement:
    base_url: str
    operator_token: str
    database_url: str
    kafka_bootstrap: str
    topic_prefix: str
    issuer: TokenIssuer
    session: aiohttp.ClientSession

    def partner_token(self, partner_id: str) -> str:
        return self.issuer.issue(partner_id, "partner", 0)

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = _NO_BODY,
        raw: bytes | None = None,
        content_type: str = "application/json",
        params: Mapping[str, str | int] | None = None,
    ) -> Reply:
        headers: dict[str, str] = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not _NO_BODY:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = content_type
        async with self.session.request(
            method, self.base_url + path, data=data, params=params, headers=headers
        ) as response:
            decoded: Any = None
            if response.content_type in ("application/json", "application/problem+json"):
                decoded = await response.json(content_type=None)
            return Reply(response.status, decoded, dict(response.headers))

    async def operator(self, method: str, path: str, **kwargs: Any) -> Reply:
        return await self.call(method, path, token=self.operator_token, **kwargs)

    async def publish(self, events: Sequence[OrderEvent]) -> None:
        """Publish order events to the orders topic, keyed by order id, as the orders relay does."""
        await publish_order_events(
            self.kafka_bootstrap, self.topic_prefix + orders.TOPIC.name, events
        )

    async def settle(self, events: Sequence[OrderEvent], within: float = 30) -> None:
        """Publish and wait until the ledger consumer has applied every one of them."""
        await self.publish(events)
        await wait_until_settled(self.database_url, [e for e, _ in events], within)

    async def balance(self, partner_id: str) -> dict[str, int]:
        reply = await self.operator("GET", f"/v1/balances/{partner_id}")
        body = reply.expect(200)
        return {
            name: body[name]["amount"] for name in ("pending", "available", "in_transit", "paid")
        }


async def publish_order_events(bootstrap: str, topic: str, events: Sequence[OrderEvent]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for envelope, _ in events:
            await producer.send(
                topic,
                value=encode_envelope(envelope),
                key=envelope.key.encode(),
                headers=kafka_headers(envelope.type, envelope.event_id),
            )
        await producer.flush()
    finally:
        await producer.stop()


async def wait_until_settled(dsn: str, envelopes: Sequence[Envelope], within: float = 30) -> None:
    """Until the ledger's consumer has taken every event: applied, or parked behind a gap.

    A sequenced event is applied once its order's position reached its number
    (the consumer keeps no dedupe row for it); one without a sequence has its row.
    """
    conn = await asyncpg.connect(dsn)
    try:

        async def applied() -> bool:
            found = await conn.fetchval(
                "SELECT count(DISTINCT e.event_id)"
                " FROM unnest($2::text[], $3::text[], $4::bigint[]) AS e(event_id, key, sequence)"
                " WHERE CASE WHEN e.sequence IS NULL THEN EXISTS (SELECT 1 FROM processed_events p"
                "   WHERE p.consumer = $1 AND p.event_id = e.event_id)"
                " ELSE EXISTS (SELECT 1 FROM consumer_positions c WHERE c.consumer = $1"
                "   AND c.key = e.key AND c.sequence >= e.sequence)"
                " OR EXISTS (SELECT 1 FROM parked_events p WHERE p.consumer = $1"
                "   AND p.event_id = e.event_id) END",
                CONSUMER,
                [e.event_id for e in envelopes],
                [e.key for e in envelopes],
                [e.sequence for e in envelopes],
            )
            return bool(found == len({e.event_id for e in envelopes}))

        await wait_for(applied, timeout=within, message="the ledger did not apply the events")
    finally:
        await conn.close()


@asynccontextmanager
async def running_settlement(
    infra: Infra,
    token_keys: TokenKeys,
    *,
    database_url: str,
    topic_prefix: str,
    consumer_group: str | None = None,
) -> AsyncIterator[Settlement]:
    """The real service, composed as in production, until the block ends."""
    port = free_port()
    settings = SettlementSettings(
        database_url=database_url,
        http_port=port,
        operator_token=Secret(token_keys.operator_token),
        token_public_key_file=token_keys.public_key_file,
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=topic_prefix,
        consumer_group=consumer_group or f"settlement-{uuid.uuid4().hex[:10]}",
        shutdown_timeout_seconds=5,
        # Tests drive one token hard; tests/security checks the limit.
        principal_rate_limit_per_minute=600_000,
        principal_rate_limit_burst=100_000,
    )
    async with (
        running_service(
            "settlement",
            settings,
            migrations=MIGRATIONS,
            topics=TOPICS,
            compose=composer(settings),
            extra_migrations=EXTRA_MIGRATIONS,
        ) as base_url,
        aiohttp.ClientSession() as session,
    ):
        yield Settlement(
            base_url=base_url,
            operator_token=token_keys.operator_token,
            database_url=database_url,
            kafka_bootstrap=infra.kafka_bootstrap,
            topic_prefix=topic_prefix,
            issuer=TokenIssuer(token_keys.private_pem, ttl=timedelta(days=1)),
            session=session,
        )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def settlement(infra: Infra, token_keys: TokenKeys) -> AsyncIterator[Settlement]:
    async with temporary_database(infra, "settlement") as dsn:
        _LEDGERS.add(dsn)
        try:
            async with running_settlement(
                infra, token_keys, database_url=dsn, topic_prefix=f"t{uuid.uuid4().hex[:10]}."
            ) as service:
                yield service
        finally:
            _LEDGERS.discard(dsn)


def as_consumed(events: Sequence[OrderEvent]) -> list[Delivery]:
    """``events`` decoded as the ledger's consumer decodes them: what the ledger reads of each."""
    registry = OrderEventBooker(300).registry
    return [Delivery(envelope, registry.decode(envelope)) for envelope, _ in events]


async def book(pool: db.Pool, events: Sequence[OrderEvent]) -> None:
    """Book ``events`` in one unit of work, as one chunk of the ledger's consumer."""
    async with db.unit_of_work(pool) as conn:
        await OrderEventBooker(300).apply(conn, as_consumed(events))
