"""Settlement catching up on a backlog of order events, beside the raw limits.

    uv run python -m bench.settlement_backlog [--events 100000] [--chunk 2000] [--profile]

``--chunk`` sizes the raw measurements' batches.

Publishes ``--events`` order events (placed, confirmed with three co-sell
charges, usage, fulfilled, some refunds) to a fresh orders topic, then, in
one run, measures:

* raw ``getmany``: reading the whole topic with a bare consumer, nothing else;
* raw batched insert: COPY of the very postings the ledger books, in chunks of
  the same size, into a table of the same shape without triggers or indexes;
* the ledger catching up: the service's own consumer (``BatchConsumer``,
  strict per-order sequencing), chunks of one partition's events booked
  set-wise, one transaction each, timed from the first event applied.

Uses ``BENCH_KAFKA_BOOTSTRAP`` + ``BENCH_PG_DSN`` (an admin DSN) when set,
otherwise starts a throwaway Kafka and PostgreSQL as local processes.
``--profile`` runs the batch catch-up under cProfile and prints where time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import random
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.local import infra
from services.settlement import order_events
from services.settlement.__main__ import MIGRATIONS
from services.settlement.consumers import (
    CONSUMER,
    OrderEventBooker,
    collect_garbage_for_batches,
    order_consumer,
)
from services.settlement.domain import JournalEntry, OrderBook, book_charge, release
from services.settlement.handlers import OrderEvent
from shared import kafka, runtime
from shared.contracts import orders
from shared.contracts.envelope import Topic, encode_envelope, new_envelope
from shared.contracts.orders import (
    Charge,
    OrderConfirmed,
    OrderFulfilled,
    OrderLine,
    OrderPlaced,
    OrderRefunded,
    OrderState,
    Refund,
    UsageRecorded,
)
from shared.ids import new_id
from shared.metrics import EVENTS_CONSUMED
from shared.migrations import PLUMBING_MIGRATIONS, migrate

FEE_BPS = 300


@dataclass(frozen=True)
class Infra:
    kafka_bootstrap: str
    admin_dsn: str

    def dsn(self, database: str) -> str:
        return urlunsplit(urlsplit(self.admin_dsn)._replace(path=f"/{database}"))


@contextlib.contextmanager
def provided_infra() -> Iterator[Infra]:
    bootstrap, admin = os.environ.get("BENCH_KAFKA_BOOTSTRAP"), os.environ.get("BENCH_PG_DSN")
    if bootstrap and admin:
        yield Infra(bootstrap, admin)
        return
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        state = Path(folder)
        broker = infra.start_kafka(state, infra.free_port(), infra.free_port(), heap_mb=384)
        postgres = infra.start_postgres(state, infra.free_port(), durable=False, databases=[])
        try:
            yield Infra(broker.bootstrap, postgres.dsn("postgres"))
        finally:
            broker.stop()
            postgres.stop()
            infra.remove_state(state)


def order_history(count: int) -> list[OrderEvent]:
    """``count`` events of orders for a three-partner offering, each order in its sequence."""
    rng = random.Random(11)
    partners = [new_id("ptr") for _ in range(30)]
    events: list[OrderEvent] = []
    while len(events) < count:
        owner, isv, integrator = rng.sample(partners, 3)
        order_id, line_id, offering_id = new_id("ord"), new_id("lin"), new_id("off")
        now = datetime.now(UTC)
        state = OrderState(
            order_id=order_id, customer_id=new_id("cus"), status="pending", currency="USD",
            total=0, placed_at=now, accept_by=now + timedelta(hours=48), changed_at=now,
            lines=[OrderLine(line_id=line_id, offering_id=offering_id, offering_version=1,
                             owner_id=owner, quantity=1, amount=0, components=[])],
        )  # fmt: skip

        def charge(
            partner: str, share_bps: int, index: int, amount: int,
            order_id: str = order_id, line_id: str = line_id, offering_id: str = offering_id,
            owner: str = owner,
        ) -> Charge:  # fmt: skip
            return Charge(
                charge_id=new_id("chg"), kind="order", order_id=order_id, line_id=line_id,
                offering_id=offering_id, component_index=index, owner_id=owner,
                partner_id=partner, role="isv", agreement_id=None, share_bps=share_bps,
                amount=amount, currency="USD",
            )  # fmt: skip

        charges = [
            charge(isv, 7_000, 0, rng.randint(1_000, 500_000)),
            charge(integrator, 9_000, 1, rng.randint(1_000, 100_000)),
            charge(owner, 10_000, 2, rng.randint(100, 50_000)),
        ]
        lifecycle: list[orders.OrderPlaced | object] = [
            OrderPlaced(order=state),
            OrderConfirmed(order=state, charges=charges),
        ]
        if rng.random() < 0.5:
            usage = charge(owner, 10_000, 3, rng.randint(1, 10_000))
            lifecycle.append(
                UsageRecorded(
                    usage_id=new_id("use"),
                    order_id=order_id,
                    customer_id=state.customer_id,
                    unit="GB-hour",
                    unit_amount=1,
                    quantity=usage.amount,
                    occurred_at=now,
                    charge=usage,
                )
            )
        if rng.random() < 0.2:
            lifecycle.append(
                OrderRefunded(
                    order_id=order_id,
                    customer_id=state.customer_id,
                    currency="USD",
                    refunds=[
                        Refund(
                            refund_id=new_id("rfd"),
                            charge_id=charges[0].charge_id,
                            amount=charges[0].amount // 3,
                            currency="USD",
                        )
                    ],
                )
            )
        lifecycle.append(OrderFulfilled(order=state))
        for sequence, event in enumerate(lifecycle, start=1):
            assert isinstance(event, orders.TOPIC.events)
            envelope = new_envelope(event, key=order_id, producer="bench", sequence=sequence)
            events.append((envelope, event))
    return events[:count]


async def publish(bootstrap: str, topic: str, events: Sequence[OrderEvent]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=20,
        max_batch_size=512 * 1024,
    )  # fmt: skip
    await producer.start()
    try:
        for envelope, _ in events:
            await producer.send(topic, value=encode_envelope(envelope), key=envelope.key.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def raw_getmany(bootstrap: str, topic: str, total: int, chunk: int) -> float:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
        enable_auto_commit=False, max_partition_fetch_bytes=8 * 1024 * 1024,
    )  # fmt: skip
    await consumer.start()
    try:
        started, seen = time.perf_counter(), 0
        while seen < total:
            batches = await consumer.getmany(timeout_ms=500, max_records=chunk)
            seen += sum(len(records) for records in batches.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def postings_of(events: Sequence[OrderEvent]) -> list[JournalEntry]:
    """The charge and release entries the ledger books for ``events`` (refunds left out)."""
    books: dict[str, OrderBook] = {}
    entries: list[JournalEntry] = []
    registry = OrderEventBooker(FEE_BPS).registry
    for envelope, _ in events:
        event = registry.decode(envelope)  # as the ledger reads it
        if isinstance(event, order_events.OrderPlaced):
            o = event.order
            books[o.order_id] = OrderBook(o.order_id, o.customer_id, o.currency, "pending",
                                          o.placed_at, o.total)  # fmt: skip
        elif isinstance(event, order_events.OrderConfirmed | order_events.UsageRecorded):
            charges = (
                event.charges if isinstance(event, order_events.OrderConfirmed) else [event.charge]
            )
            for c in charges:
                _, entry = book_charge(books[c.order_id], c, fee_bps=FEE_BPS,
                                       booked_at=envelope.occurred_at, event_id=None)  # fmt: skip
                entries.append(entry) if entry else None
        elif isinstance(event, order_events.OrderFulfilled):
            released = release(books[event.order.order_id], booked_at=envelope.occurred_at,
                               event_id=None)  # fmt: skip
            entries.append(released) if released else None
    return entries


async def raw_insert(
    dsn: str, entries: Sequence[JournalEntry], events_per_chunk: int, total: int
) -> float:
    rows = [
        (e.entry_id, line, p.account, p.partner_id, e.currency, p.amount, p.part, p.order_id)
        for e in entries
        for line, p in enumerate(e.postings, start=1)
    ]
    per_chunk = max(1, len(rows) * events_per_chunk // total)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE raw_postings (entry_id text, line smallint, account text,"
            " partner_id text, currency text, amount bigint, part text, order_id text)"
        )
        started = time.perf_counter()
        for start in range(0, len(rows), per_chunk):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "raw_postings", records=rows[start : start + per_chunk],
                    columns=("entry_id", "line", "account", "partner_id", "currency", "amount",
                             "part", "order_id"),
                )  # fmt: skip
        return time.perf_counter() - started
    finally:
        await conn.close()


@dataclass(frozen=True)
class CatchUp:
    seconds: float  # from the first event applied, scaled to all of them
    python_cpu: float  # this process's CPU seconds over the whole catch-up
    postgres_cpu: float | None  # the pool's backends' CPU seconds, when PostgreSQL is local


_APPLIED = {"consumer": CONSUMER, "outcome": "applied"}


def _applied() -> float:
    """Events the ledger's consumer applied and committed (its own counter, no query)."""
    for metric in EVENTS_CONSUMED.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels == _APPLIED:
                return sample.value
    return 0.0


def _backend_cpu(pids: Sequence[int]) -> float | None:
    """CPU seconds of PostgreSQL backends, read from /proc (None when not on this machine)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def service_catch_up(bootstrap: str, prefix: str, dsn: str, total: int) -> CatchUp:
    """The service's own consumer, from the first event it applied until ``total`` are.

    Timed from the first applied event, so joining the consumer group (seconds,
    and not what a backlog costs) is left out; the first events are counted out too.
    Progress is read from the consumer's own counter: polling the database for
    it cost PostgreSQL a scan of the dedupe table 20 times a second.
    """
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
    producer = kafka.new_producer(bootstrap, client_id="bench")
    await producer.start()
    consumer = order_consumer(
        booker=OrderEventBooker(FEE_BPS), bootstrap=bootstrap, topic_prefix=prefix, pool=pool,
        producer=producer, group_id=f"bench-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    pids: list[int] = []
    for _ in range(4):
        async with pool.acquire() as conn:
            pids.append(conn.get_server_pid())
    before, cpu = _applied(), time.process_time()
    pg_cpu = _backend_cpu(pids)
    task = asyncio.create_task(consumer.run())
    try:
        first: tuple[float, float] | None = None
        while True:
            applied = _applied() - before
            if first is None and applied:
                first = (time.perf_counter(), applied)
            if applied >= total:
                break
            await asyncio.sleep(0.02)
        assert first is not None
        elapsed = time.perf_counter() - first[0]
        pg_after = _backend_cpu(pids)
        return CatchUp(
            seconds=elapsed * total / max(1, total - first[1]),
            python_cpu=time.process_time() - cpu,
            postgres_cpu=None if pg_cpu is None or pg_after is None else pg_after - pg_cpu,
        )
    finally:
        consumer.stop()
        await task
        await producer.stop()
        await pool.close()


@contextlib.asynccontextmanager
async def ledger_database(admin_dsn: str, dsn_of: Infra) -> AsyncIterator[str]:
    name = f"bench_settlement_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = dsn_of.dsn(name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, [("plumbing", PLUMBING_MIGRATIONS), ("settlement", MIGRATIONS)])
    finally:
        await conn.close()
    try:
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _rate(events: int, seconds: float) -> str:
    return f"{events / seconds:>10,.0f} events/s  ({seconds:6.2f} s)"


async def measure(args: argparse.Namespace, where: Infra) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    topic = prefix + orders.TOPIC.name
    spec = Topic(topic, 6, "order_id", orders.TOPIC.events)
    await kafka.ensure_topics(where.kafka_bootstrap, kafka.topic_specs([spec]))
    events = order_history(args.events)
    started = time.perf_counter()
    await publish(where.kafka_bootstrap, topic, events)
    print(f"published {len(events):,} order events in {time.perf_counter() - started:.1f}s")

    total = len(events)
    getmany = await raw_getmany(where.kafka_bootstrap, topic, total, args.chunk)
    entries = postings_of(events)
    postings = sum(len(e.postings) for e in entries)
    async with ledger_database(where.admin_dsn, where) as dsn:
        insert = await raw_insert(dsn, entries, args.chunk, total)
    # The service under test must not pay for the bench's own 100,000 events
    # and their entries: held, every garbage collection in the process walks them.
    del events, entries
    collect_garbage_for_batches()  # as the service's process does
    async with ledger_database(where.admin_dsn, where) as dsn:
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        caught_up = await service_catch_up(where.kafka_bootstrap, prefix, dsn, total)
        settled = caught_up.seconds
        if profiler:
            profiler.disable()
        async with _connected(dsn) as conn:
            booked = await conn.fetchval("SELECT count(*) FROM postings")
            off = await conn.fetchval(
                "SELECT count(*) FROM (SELECT currency FROM postings GROUP BY currency"
                " HAVING sum(amount) <> 0) unbalanced"
            )

    limit = max(getmany, insert)
    balance = "zero" if not off else "OFF"
    print(f"\n{total:,} order events -> {booked:,} postings booked "
          f"({postings:,} charge/release postings in the raw insert); trial balance "
          f"{balance}; chunk {args.chunk}; {os.cpu_count()} cores shared")  # fmt: skip
    print(f"raw getmany                 {_rate(total, getmany)}")
    print(f"raw batched COPY, postings  {_rate(total, insert)}")
    print(f"ledger catching up          {_rate(total, settled)}  "
          f"= {limit / settled:.0%} of the slower raw limit, "
          f"{(getmany + insert) / settled:.0%} of both in sequence")  # fmt: skip
    per_event = 1e6 / total
    pg = caught_up.postgres_cpu
    print(f"CPU per event while catching up: the ledger's process "
          f"{caught_up.python_cpu * per_event:.0f} us (joining the group included), "
          + (f"its PostgreSQL backends {pg * per_event:.0f} us" if pg is not None
             else "PostgreSQL not local"))  # fmt: skip
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())


@contextlib.asynccontextmanager
async def _connected(dsn: str) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=2_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with provided_infra() as where:
        runtime.run(measure(args, where))


if __name__ == "__main__":
    main()
