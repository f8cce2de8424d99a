"""The pipeline bench's actors: the catalog it sets up, the customers who place, the partners.

Everything goes through the public doors (HTTP, and the ``orders.fulfillments``
and ``orders.orders`` topics a partner can read); the only thing read behind a
door is settlement's ledger, read-only, for when each order was charged.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import msgspec
from aiokafka import AIOKafkaConsumer

from deploy.demo.actors import Account, open_fulfilment_feed
from deploy.demo.client import Marketplace
from shared.contracts import fulfillments, orders
from shared.contracts.envelope import EventRegistry, UnknownEvent, decode_envelope
from shared.contracts.fulfillments import FulfillmentRequested
from shared.contracts.orders import OrderConfirmed


@dataclass(frozen=True)
class Cast:
    partners: dict[str, Account]
    offering_id: str
    customers: list[Account]


async def open_catalog(client: Marketplace, operator_token: str, customers: int) -> Cast:
    """An ISV and an integrator let a managed-service provider sell their parts together."""
    partners: dict[str, Account] = {}
    for kind in ("isv", "managed_service", "integrator"):
        body = await client.create(
            "catalog", "/v1/partners", token=operator_token,
            body={"name": f"bench {kind}", "kind": kind},
        )  # fmt: skip
        partners[kind] = Account(body["id"], body["token"])
    msp = partners["managed_service"]
    agreements: dict[str, str] = {}
    for kind, share in (("isv", 7_000), ("integrator", 9_000)):
        body = await client.create(
            "catalog", "/v1/agreements", token=partners[kind].token,
            body={"grantee_id": msp.id, "role": kind, "share_bps": share},
        )  # fmt: skip
        agreements[kind] = body["id"]
    components = [
        {"partner_id": partners["isv"].id, "role": "isv", "name": "licence",
         "pricing": {"model": "one_time", "unit_amount": 5_000},
         "agreement_id": agreements["isv"]},
        {"partner_id": msp.id, "role": "managed_service", "name": "operations",
         "pricing": {"model": "one_time", "unit_amount": 2_000}},
        {"partner_id": partners["integrator"].id, "role": "integrator", "name": "go-live",
         "pricing": {"model": "one_time", "unit_amount": 1_000},
         "agreement_id": agreements["integrator"]},
    ]  # fmt: skip
    draft = await client.create(
        "catalog", "/v1/offerings", token=msp.token,
        body={"name": "Managed database", "description": "bench", "currency": "USD",
              "components": components},
    )  # fmt: skip
    await client.act("catalog", f"/v1/offerings/{draft['id']}/publish", token=msp.token)
    signed_up: list[Account] = []
    for n in range(customers):
        body = await client.create(
            "catalog", "/v1/customers", token=None,
            body={"name": f"customer {n}", "email": f"c{n}-{uuid.uuid4().hex[:6]}@bench.test"},
        )  # fmt: skip
        signed_up.append(Account(body["id"], body["token"]))
    return Cast(partners, draft["id"], signed_up)


@dataclass
class Placed:
    """One placement: when it was due (wall clock), how long until 201, the order it made."""

    due: float
    latency: float
    order_id: str | None


class Customers:
    """Open-loop placement: one order every 1/rate s, whatever the earlier ones are doing."""

    def __init__(self, session: aiohttp.ClientSession, orders_url: str, cast: Cast) -> None:
        self.session = session
        self.url = f"{orders_url}/v1/orders"
        self.body = msgspec.json.encode(
            {"lines": [{"offering_id": cast.offering_id, "quantity": 1}]}
        )
        self.headers = [
            {"Authorization": f"Bearer {c.token}", "Content-Type": "application/json"}
            for c in cast.customers
        ]
        self.refusals: Counter[str] = Counter()
        self._turn = 0

    async def place(self) -> str | None:
        self._turn += 1
        headers = self.headers[self._turn % len(self.headers)]
        try:
            async with self.session.post(self.url, data=self.body, headers=headers) as response:
                answer = await response.read()
                if response.status == 201:
                    order_id: str = msgspec.json.decode(answer)["id"]
                    return order_id
                self.refusals[f"{response.status} {answer[:120]!r}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.refusals[type(exc).__name__] += 1
        return None

    async def first_order(self, timeout: float = 60.0) -> str:  # noqa: ASYNC109
        """Retry until orders has read the catalog's new accounts and offering."""
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            order_id = await self.place()
            if order_id is not None:
                self.refusals.clear()
                return order_id
            await asyncio.sleep(0.3)
        raise RuntimeError(f"no order placed within {timeout}s: {dict(self.refusals)}")

    async def step(self, rate: float, seconds: float) -> list[Placed]:
        loop = asyncio.get_running_loop()
        started, wall = loop.time(), time.time()
        placed: list[Placed] = []

        async def one(offset: float) -> None:
            await asyncio.sleep(max(0.0, started + offset - loop.time()))
            order_id = await self.place()
            placed.append(Placed(wall + offset, loop.time() - started - offset, order_id))

        await asyncio.gather(*(one(i / rate) for i in range(int(rate * seconds))))
        return placed


@dataclass
class PartnerDesk:
    """The offering's partners: accept every request, complete once the order is confirmed."""

    session: aiohttp.ClientSession
    orders_url: str
    tokens: dict[str, str]  # partner id -> token
    accepted: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    _asked: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def read(self, consumers: list[AIOKafkaConsumer]) -> None:
        registry = EventRegistry((*fulfillments.TOPIC.events, *orders.TOPIC.events))

        async def drain(consumer: AIOKafkaConsumer) -> None:
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=2000)
                for records in batches.values():
                    for record in records:
                        try:
                            self._receive(registry.decode(decode_envelope(record.value)))
                        except (UnknownEvent, msgspec.DecodeError):
                            continue

        await asyncio.gather(*(drain(c) for c in consumers))

    def _receive(self, event: object) -> None:
        match event:
            case FulfillmentRequested(fulfillment=request):
                token = self.tokens.get(request.partner_id)
                if token is None:
                    return
                self._asked.setdefault(request.order_id, []).append((request.fulfillment_id, token))
                self._spawn(request.fulfillment_id, token, "accept")
            case OrderConfirmed(order=order):
                for fulfillment_id, token in self._asked.pop(order.order_id, []):
                    self._spawn(fulfillment_id, token, "complete")
            case _:
                return

    def _spawn(self, fulfillment_id: str, token: str, what: str) -> None:
        task = asyncio.get_running_loop().create_task(self._act(fulfillment_id, token, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _act(self, fulfillment_id: str, token: str, what: str) -> None:
        url = f"{self.orders_url}/v1/fulfillments/{fulfillment_id}/{what}"
        try:
            async with self.session.post(
                url, headers={"Authorization": f"Bearer {token}"}
            ) as response:
                await response.read()
                if response.status in (200, 201, 202, 204):
                    self.accepted[what] += 1
                else:
                    self.failures[f"{what} {response.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failures[f"{what} {type(exc).__name__}"] += 1


async def partner_feeds(
    bootstrap: str, prefix: str, within: float = 60.0
) -> list[AIOKafkaConsumer]:
    """Consumers at the end of both topics a partner reads, positioned before any order.

    Orders creates its topics as it starts; a busy broker may not list them at once.
    """
    give_up = time.monotonic() + within
    feeds: list[AIOKafkaConsumer] = []
    for topic in (fulfillments.TOPIC, orders.TOPIC):
        while True:
            try:
                feeds.append(await open_fulfilment_feed(bootstrap, prefix + topic.name))
                break
            except LookupError:
                if time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.5)
    return feeds


@dataclass(frozen=True)
class Charged:
    """Settlement's record of an order: confirmed (the event's time) and booked (its commit)."""

    confirmed: float
    charged: float


async def charged(ledger: asyncpg.Pool, order_ids: list[str]) -> dict[str, Charged]:
    """Read-only: the charges settlement has booked for these orders.

    ``booked_at`` is the OrderConfirmed event's time (when orders confirmed);
    ``recorded_at`` is ``now()`` of the settlement transaction that booked it.
    """
    rows = await ledger.fetch(
        "SELECT order_id, min(booked_at) AS confirmed, max(recorded_at) AS charged"
        " FROM journal_entries WHERE kind = 'charge' AND order_id = ANY($1::text[])"
        " GROUP BY order_id",
        order_ids,
    )
    return {r["order_id"]: Charged(_epoch(r["confirmed"]), _epoch(r["charged"])) for r in rows}


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


def summary(counter: Counter[str]) -> dict[str, Any]:
    return dict(counter.most_common(5))


class DatabaseWatch:
    """Samples ``pg_stat_activity`` (read-only): what each service's connections are doing.

    A service whose pool is all busy waiting on PostgreSQL is bound by the database,
    not by its own CPU; the wait events say on what (WAL flush, a row lock, ...).
    """

    def __init__(self, admin: asyncpg.Pool, databases: dict[str, str]) -> None:
        self.admin = admin
        self.services = {database: service for service, database in databases.items()}
        self.seen: Counter[tuple[str, str]] = Counter()
        self.samples = 0

    async def watch(self, every: float = 0.25) -> None:
        while True:
            rows = await self.admin.fetch(
                "SELECT datname, state, coalesce(wait_event_type || ':' || wait_event, 'running')"
                " AS doing FROM pg_stat_activity WHERE datname = ANY($1::text[])"
                " AND backend_type = 'client backend' AND state <> 'idle'",
                list(self.services),
            )
            self.samples += 1
            for row in rows:
                doing = "idle in transaction" if row["state"] != "active" else row["doing"]
                self.seen[(self.services[row["datname"]], doing)] += 1
            await asyncio.sleep(every)

    def take(self) -> dict[str, dict[str, float]]:
        """Mean number of connections per service and activity since the last take."""
        busy: dict[str, dict[str, float]] = {}
        for (service, doing), count in self.seen.items():
            busy.setdefault(service, {})[doing] = count / max(1, self.samples)
        self.seen.clear()
        self.samples = 0
        return busy
