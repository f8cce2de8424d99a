"""Settlement at a steady, moderate rate: CPU per event with the consumer's linger off and on.

    uv run python -m bench.settlement_steady [--rates 400,1000] [--lingers 0,0.1] [--seconds 10]

At a steady rate the ledger's consumer takes a chunk as soon as there is one,
so chunks stay small and each pays a transaction's fixed ~10 statements;
``linger_seconds`` trades a bounded delay for larger chunks.  For each rate
and each linger, in one run and in turn (each on a fresh topic and database),
a child process publishes order events (``bench.settlement_backlog``'s
history, stamped when sent) at that rate for ``--seconds`` while the
service's own consumer books them in this process, and the bench reports:

* CPU per event of this process (the consumer) and of the database's
  PostgreSQL backends, over the window from the first send to the last
  event booked;
* transactions (chunks) per second and events per chunk;
* the delay from an event's time to its chunk's booking (the handler done,
  the commit a statement later).

Uses ``BENCH_KAFKA_BOOTSTRAP`` + ``BENCH_PG_DSN`` (an admin DSN) when set,
otherwise starts a throwaway Kafka and PostgreSQL as local processes.  The
PostgreSQL CPU is read from ``/proc``, so only when the server runs on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from bench.pipeline_cpu import backends_cpu
from bench.settlement_backlog import (
    FEE_BPS,
    Infra,
    ledger_database,
    order_history,
    provided_infra,
)
from services.settlement.consumers import (
    OrderEventBooker,
    collect_garbage_for_batches,
    order_consumer,
)
from shared import db, kafka, runtime
from shared.consumer import Delivery
from shared.contracts import orders
from shared.contracts.envelope import Topic, encode_envelope
from shared.db import Connection

# How often the publisher sends what is due: about as often as the orders
# service's outbox relay makes a pass under load.
_TICK_SECONDS = 0.02


@dataclass
class Bookings:
    """What the consumer booked, as its handler saw it."""

    chunks: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)  # seconds, event time to booked


@dataclass(frozen=True)
class Run:
    rate: int
    linger: float
    events: int
    seconds: float
    python_cpu: float
    postgres_cpu: float | None
    bookings: Bookings


class TimedBooker(OrderEventBooker):
    """The service's booker, noting each chunk's size and its events' delays."""

    def __init__(self, fee_bps: int) -> None:
        super().__init__(fee_bps)
        self.bookings = Bookings()

    async def apply(self, conn: Connection, deliveries: Sequence[Delivery]) -> None:
        await super().apply(conn, deliveries)
        now = datetime.now(UTC)
        self.bookings.chunks.append(len(deliveries))
        self.bookings.delays.extend(
            (now - delivery.envelope.occurred_at).total_seconds() for delivery in deliveries
        )


async def publish_steadily(bootstrap: str, topic: str, rate: int, seconds: float) -> None:
    """The child process: ``rate`` events a second for ``seconds``, each stamped when sent."""
    events = order_history(int(rate * seconds))
    producer = kafka.new_producer(bootstrap, client_id="bench-steady")
    await producer.start()
    print("sending", flush=True)  # the parent's window opens
    try:
        started, sent = time.perf_counter(), 0
        while sent < len(events):
            due = min(len(events), int((time.perf_counter() - started) * rate) + 1)
            now = datetime.now(UTC)
            for envelope, _ in events[sent:due]:
                stamped = msgspec.structs.replace(envelope, occurred_at=now)
                await producer.send(
                    topic, value=encode_envelope(stamped), key=envelope.key.encode()
                )
            sent = due
            await asyncio.sleep(_TICK_SECONDS)
        await producer.flush()
    finally:
        await producer.stop()


async def one_run(where: Infra, rate: int, linger: float, seconds: float, partitions: int) -> Run:
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    topic = prefix + orders.TOPIC.name
    spec = Topic(topic, partitions, "order_id", orders.TOPIC.events)
    await kafka.ensure_topics(where.kafka_bootstrap, kafka.topic_specs([spec]))
    total = int(rate * seconds)
    booker = TimedBooker(FEE_BPS)
    async with ledger_database(where.admin_dsn, where) as dsn:
        database = dsn.rsplit("/", 1)[1]
        pool = await db.create_pool(dsn, min_size=orders.TOPIC.partitions,
                                    max_size=orders.TOPIC.partitions)  # fmt: skip
        producer = kafka.new_producer(where.kafka_bootstrap, client_id="bench")
        await producer.start()
        consumer = order_consumer(
            booker=booker, bootstrap=where.kafka_bootstrap, topic_prefix=prefix, pool=pool,
            producer=producer, group_id=f"bench-{uuid.uuid4().hex[:8]}", linger_seconds=linger,
        )  # fmt: skip
        task = asyncio.create_task(consumer.run())
        try:
            await _until(lambda: consumer.assignments > 0, task)
            publisher = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.settlement_steady", "--publish", topic,
                "--bootstrap", where.kafka_bootstrap, "--rates", str(rate),
                "--seconds", str(seconds), stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert publisher.stdout is not None
            await publisher.stdout.readline()
            cpu, pg_before = time.process_time(), backends_cpu(database)
            started = time.perf_counter()
            await _until(lambda: sum(booker.bookings.chunks) >= total, task)
            elapsed = time.perf_counter() - started
            python_cpu, pg_after = time.process_time() - cpu, backends_cpu(database)
            await publisher.wait()
        finally:
            consumer.stop()
            await task
            await producer.stop()
            await pool.close()
    postgres_cpu = (
        sum(cpu - pg_before.get(pid, 0.0) for pid, cpu in pg_after.items()) if pg_after else None
    )
    return Run(rate, linger, total, elapsed, python_cpu, postgres_cpu, booker.bookings)


async def _until(condition: Callable[[], bool], consumer: asyncio.Task[None]) -> None:
    while True:
        if condition():
            return
        if consumer.done():
            await consumer  # the consumer died: say why
            raise RuntimeError("the consumer stopped")
        await asyncio.sleep(0.02)


def report(run: Run) -> str:
    per_event = 1e6 / run.events
    chunks = run.bookings.chunks
    delays = sorted(run.bookings.delays)
    pg = run.postgres_cpu
    return (
        f"{run.rate:>6,}/s  linger {run.linger * 1000:>4.0f} ms  "
        f"{len(chunks) / run.seconds:>6.1f} chunks/s  {statistics.mean(chunks):>6.1f} ev/chunk  "
        f"CPU/event: consumer {run.python_cpu * per_event:>5.0f} us, "
        + (f"PostgreSQL {pg * per_event:>5.0f} us, " if pg is not None else "PostgreSQL n/a, ")
        + f"both {(run.python_cpu + (pg or 0.0)) * per_event:>5.0f} us  "
        f"delay p50 {statistics.median(delays) * 1000:>4.0f} ms, "
        f"p99 {delays[int(len(delays) * 0.99)] * 1000:>4.0f} ms, max {delays[-1] * 1000:>4.0f} ms"
    )


async def measure(args: argparse.Namespace, where: Infra) -> None:
    collect_garbage_for_batches()  # as the service's process does
    print(f"order events at a steady rate for {args.seconds:g} s each, "
          f"{args.partitions} partitions; "
          f"{os.cpu_count()} cores shared with whatever else runs")  # fmt: skip
    for rate in args.rates:
        for linger in args.lingers:
            run = await one_run(where, rate, linger, args.seconds, args.partitions)
            print(report(run), flush=True)


def _numbers(text: str) -> list[float]:
    return [float(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=lambda t: [int(r) for r in _numbers(t)],
                        default=[400, 1_000])  # fmt: skip
    parser.add_argument("--lingers", type=_numbers, default=[0.0, 0.1])
    parser.add_argument("--seconds", type=float, default=10.0)
    # Fewer than the contract's 6: what chunks spanning partitions would make of a linger.
    parser.add_argument("--partitions", type=int, default=orders.TOPIC.partitions)
    parser.add_argument("--publish", help=argparse.SUPPRESS)  # the child's topic
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        runtime.run(publish_steadily(args.bootstrap, args.publish, args.rates[0], args.seconds))
        return
    with provided_infra() as where:
        runtime.run(measure(args, where))


if __name__ == "__main__":
    main()
