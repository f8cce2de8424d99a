"""Bad messages on every topic a service consumes: dead-lettered or parked, and nothing else.

Each poison kind goes to every partition of every consumed topic, ahead of a
good event, so whichever partition the good event lands on, the consumer had
to get past the poison first.  Every consumer of a topic must dead-letter every
poison message to ``<topic>.dlq`` (its name in ``dlq-consumer``); an order event
out of its sequence is parked instead.  The services' own tables change only
by the good events.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import asyncpg
import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from services.settlement.consumers import CONSUMER as LEDGER
from shared.contracts import catalog_accounts, catalog_agreements, catalog_offerings, orders
from shared.contracts.envelope import Topic
from shared.sequencing import parked_events
from tests.integration.doors.conftest import Marketplace
from tests.integration.settlement.order_events import OrderScript, Part
from tests.support.kafka import TopicReader
from tests.support.waiting import wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

PARTITIONS = 6
# Below the broker's default max.message.bytes (1 MiB), which the topics keep.
OVERSIZED = 900 * 1024

# Who reads which topic (services/*/__main__.py, consumers.py, shared.account_generations).
CONSUMERS: dict[Topic, tuple[str, ...]] = {
    catalog_accounts.TOPIC: ("orders.account-generations", "settlement.account-generations"),
    catalog_agreements.TOPIC: ("orders.catalog-copy",),
    catalog_offerings.TOPIC: ("orders.catalog-copy",),
    orders.TOPIC: (LEDGER,),
}

# The tables each service keeps from what it consumes.
ORDERS_TABLES = ("offering_versions", "agreements", "account_generations", "orders")
SETTLEMENT_TABLES = ("journal_entries", "postings", "account_generations")


def _envelope(event_type: str, payload: Any, **extra: Any) -> bytes:
    return msgspec.json.encode(
        {
            "event_id": f"evt_poison{uuid.uuid4().hex}",
            "type": event_type,
            "schema_version": 1,
            "occurred_at": "2026-01-01T00:00:00Z",
            "key": "poison",
            "producer": "an attacker",
            "payload": payload,
            **extra,
        }
    )


def poisons(topic: Topic) -> Iterator[tuple[str, bytes | None]]:
    """(kind, value) of each bad message for ``topic``."""
    known = topic.events[0].EVENT_TYPE
    yield "garbage", b"\x00\xff\xfe not json at all \x80"
    yield "not an envelope", b'{"hello": "world", "items": [1, 2, 3]}'
    yield "unknown type", _envelope("SomethingNobodyKnows", {"x": 1}, sequence=1)
    # Whichever field the type names its subject by, it comes with the wrong JSON type.
    wrong = dict.fromkeys(("order", "partner", "customer", "offering", "agreement"), 42)
    yield "wrong-typed payload", _envelope(known, wrong, sequence=1)
    yield "oversized", _envelope(known, "x" * OVERSIZED, sequence=1)
    yield "tombstone", None


async def _send_poison(bootstrap: str, topic: str, run: str) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=2 * 1024 * 1024
    )
    await producer.start()
    sent = 0
    try:
        for kind, value in poisons(next(t for t in CONSUMERS if topic.endswith(t.name))):
            for partition in range(PARTITIONS):
                await producer.send_and_wait(
                    topic,
                    value=value,
                    key=b"poison",
                    partition=partition,
                    headers=[("poison-kind", kind.encode()), ("poison-run", run.encode())],
                )
                sent += 1
    finally:
        await producer.stop()
    return sent


def _header(record: Any, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value).decode()
    return None


async def _rows(dsn: str, tables: tuple[str, ...]) -> dict[str, set[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            table: {row[0] for row in await conn.fetch(f"SELECT t::text FROM {table} t")}
            for table in tables
        }
    finally:
        await conn.close()


def _only_good_changes(
    before: dict[str, set[str]], after: dict[str, set[str]], good: set[str]
) -> list[str]:
    wrong: list[str] = []
    for table, rows in before.items():
        wrong += [f"{table} lost {row}" for row in rows - after[table]]
        wrong += [
            f"{table} gained {row[:200]}"
            for row in after[table] - rows
            if not any(good_id in row for good_id in good)
        ]
    return wrong


async def _accounts_known(market: Marketplace, partner_ids: set[str]) -> bool:
    """Both services that read ``catalog.accounts`` hold every one of ``partner_ids``."""
    for dsn in (market.orders.database_url, market.settlement.database_url):
        conn = await asyncpg.connect(dsn)
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM account_generations WHERE subject = ANY($1::text[])",
                list(partner_ids),
            )
        finally:
            await conn.close()
        if found != len(partner_ids):
            return False
    return True


async def test_poison_on_every_consumed_topic_is_dead_lettered_and_the_rest_goes_on(
    marketplace: Marketplace,
) -> None:
    market = marketplace
    catalog, settlement = market.catalog, market.settlement
    bootstrap = catalog.kafka_bootstrap
    # Everything the good events need exists, and is known downstream, before the snapshot.
    owner = await catalog.onboard_partner("isv")
    grantee = await catalog.onboard_partner("managed_service")
    await market.orders.wait_until_known((await catalog.publish_new(owner))["id"])
    await wait_for(
        lambda: _accounts_known(market, {owner.id, grantee.id}),
        timeout=30,
        message="the partners never reached orders and settlement",
    )
    orders_before = await _rows(market.orders.database_url, ORDERS_TABLES)
    ledger_before = await _rows(settlement.database_url, SETTLEMENT_TABLES)

    run = uuid.uuid4().hex
    sent = {
        topic: await _send_poison(bootstrap, catalog.topic_name(topic), run) for topic in CONSUMERS
    }
    # An order event whose predecessor never came: parked, not applied, not dead-lettered.
    gap = OrderScript(customer_id="cus_poison", owner_id=owner.id)
    gap.placed(1_000)
    out_of_sequence = gap.confirmed([gap.charge(Part(owner.id, "isv", 10_000), 1_000, 0)])
    await settlement.publish([out_of_sequence])

    # The good events, behind the poison on every partition.
    newcomer = await catalog.onboard_partner("integrator")
    terms = await catalog.grant(owner, grantee, share_bps=6_000)
    offering = await catalog.publish_new(owner, components=[catalog.component(owner)])
    good_order = OrderScript(customer_id="cus_good", owner_id=owner.id)
    placed = good_order.placed(2_500)
    confirmed = good_order.confirmed([good_order.charge(Part(owner.id, "isv", 10_000), 2_500, 0)])
    await settlement.settle([placed, confirmed], within=60)
    await market.orders.wait_until_known(offering["id"])

    async def known_downstream() -> bool:
        async with market.orders.database() as conn:
            agreement = await conn.fetchval(
                "SELECT true FROM agreements WHERE agreement_id = $1", terms["id"]
            )
        return bool(agreement) and await _accounts_known(market, {newcomer.id})

    await wait_for(known_downstream, timeout=60, message="a good event behind the poison")

    for topic, consumers in CONSUMERS.items():
        wanted = Counter(
            {
                (consumer, kind, str(partition)): 1
                for consumer in consumers
                for kind, _ in poisons(topic)
                for partition in range(PARTITIONS)
            }
        )
        assert sum(wanted.values()) == sent[topic] * len(consumers)
        dead_letters = catalog.topic_name(topic) + ".dlq"
        async with TopicReader(bootstrap, dead_letters) as reader:

            async def all_dead_lettered(
                reader: TopicReader = reader, wanted: Counter[tuple[str, str, str]] = wanted
            ) -> bool:
                records = [r for r in await reader.poll() if _header(r, "poison-run") == run]
                seen = Counter(
                    (
                        _header(r, "dlq-consumer") or "",
                        _header(r, "poison-kind") or "",
                        _header(r, "dlq-original-partition") or "",
                    )
                    for r in records
                )
                assert all(seen[k] <= 1 for k in seen), f"dead-lettered twice: {seen}"
                return seen == wanted

            await wait_for(
                all_dead_lettered, timeout=60, message=f"poison not all in {dead_letters}"
            )
            for record in reader.records:
                if _header(record, "poison-run") == run:
                    assert _header(record, "dlq-error"), record.headers
                    assert _header(record, "dlq-original-topic") == catalog.topic_name(topic)

    ledger = await asyncpg.connect(settlement.database_url)
    try:
        parked = await parked_events(ledger, LEDGER)
        totals = await ledger.fetch(
            "SELECT currency, sum(amount)::bigint AS total FROM postings GROUP BY currency"
        )
    finally:
        await ledger.close()
    assert [(p.key, p.sequence, p.waiting_for) for p in parked] == [(gap.order_id, 2, 1)]
    assert all(row["total"] == 0 for row in totals), f"trial balance off: {totals}"

    orders_after = await _rows(market.orders.database_url, ORDERS_TABLES)
    ledger_after = await _rows(settlement.database_url, SETTLEMENT_TABLES)
    good_in_orders = {newcomer.id, terms["id"], offering["id"]}
    assert _only_good_changes(orders_before, orders_after, good_in_orders) == []
    good_in_ledger = {newcomer.id, good_order.order_id}
    assert _only_good_changes(ledger_before, ledger_after, good_in_ledger) == []
    assert await settlement.balance(owner.id) == {
        "pending": 2_500 - 75,  # less the 3 % marketplace fee
        "available": 0,
        "in_transit": 0,
        "paid": 0,
    }
