"""One process against two, of orders and of settlement, in one run: ``make bench-scale``.

    uv run python -m bench.scale_out [--rates 25,50,...] [--seconds 3] [--outbox 10000]
                                     [--events 60000]

The services run as real processes (``python -m services.<name>``, see
``bench/processes.py``) over the Kafka and PostgreSQL of ``TEST_KAFKA_BOOTSTRAP``
and ``TEST_PG_DSN`` (neither set: a throwaway broker and PostgreSQL of its own).
A second process of a service is a second replica: same database, same topic
prefix, so the same consumer groups.  Each configuration gets a fresh database
and prefix, and is measured after the broker describes its groups as shared
(every member holding partitions).

* **Orders placement.**  The orders database is seeded with a three-partner
  offering (``bench.orders_place.prepare``: no catalog needed).  Customers'
  ``POST /v1/orders`` go round robin to the orders processes, open loop, at
  rising offered rates of ``--seconds`` each, until a step falls behind
  (achieved < 97 % of offered) or errs.  Reported: the best rate with p99 <=
  50 ms, and the best sustained at any p99.
* **Orders relay.**  ``--outbox`` rows committed at once into the outbox; the
  time until every one is marked sent.  Only one relay per database publishes
  (an advisory lock elects it), so a second process adds nothing here: this
  shows it.
* **Settlement catch-up.**  The processes join their consumer group on empty
  topics; then ``--events`` order events (``bench.settlement_backlog``'s
  history: placed, confirmed with three co-sell charges, usage, refunds,
  fulfilled) are published to the orders topic (6 partitions, as declared in
  ``shared/contracts/orders.py``), and the ledger's processed-event count is
  read until it holds them all, timed from the first applied event.

Writes ``bench/results/scale-out.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import msgspec

from bench import orders_place as placing
from bench import pipeline_limits as limits
from bench.orders_place import P99_BUDGET, Step
from bench.pipeline import cpu_seconds, infrastructure
from bench.processes import Fleet, fleet, service_env, signing_keys
from bench.settlement_backlog import order_history, publish
from deploy.local import infra
from services.settlement.consumers import CONSUMER as LEDGER
from services.settlement.handlers import OrderEvent
from shared.contracts import orders
from shared.ids import new_id
from shared.tokens import TokenIssuer
from tests.support.stack import ORDERS_CATALOG_GROUP, SETTLEMENT_GROUP, describe_group

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
COUNTS = (1, 2)
PLACEMENT = msgspec.json.encode({"lines": [{"offering_id": placing.OFFERING_ID, "quantity": 1}]})
GROUP_TIMEOUT = 90.0  # a join waits for the others' next poll; a shared broker is slow
CATCH_UP_TIMEOUT = 600.0


@dataclass(frozen=True)
class Args:
    rates: list[float]
    seconds: float
    outbox: int
    events: int
    out: Path


@dataclass
class Configuration:
    """What one configuration (one or two processes of a service) measured."""

    processes: int
    partitions: list[int] = field(default_factory=list)  # per member, as the broker assigned
    cores: float = 0.0  # CPU the service's processes used while measured (1.0 = one core)
    client_cores: float = 0.0  # CPU of this process (the load generator) meanwhile


@dataclass
class OrdersRun(Configuration):
    steps: list[Step] = field(default_factory=list)
    relay_per_s: float = 0.0

    def best(self, within_budget: bool) -> Step | None:
        kept = [
            s for s in self.steps if _keeps_up(s) and (s.p99 <= P99_BUDGET or not within_budget)
        ]
        return max(kept, key=lambda s: s.achieved, default=None)


@dataclass
class SettlementRun(Configuration):
    per_s: float = 0.0
    seconds: float = 0.0
    postings: int = 0
    trial_balance_zero: bool = False


def _keeps_up(step: Step) -> bool:
    return step.errors == 0 and step.achieved >= 0.97 * step.rate


@dataclass(frozen=True)
class Run:
    """One shared broker and PostgreSQL; each configuration gets its own database and prefix."""

    kafka: str
    admin_dsn: str
    state: Path
    suffix: str
    operator_token: str

    def prefix(self, what: str, count: int) -> str:
        return f"benchscale{self.suffix}{what}{count}."

    @contextmanager
    def database(self, what: str, count: int) -> Iterator[str]:
        name = f"bench_scale_{what}{count}_{self.suffix}"
        asyncio.run(placing._create_database(self.admin_dsn, name))
        try:
            yield f"{self.admin_dsn.rsplit('/', 1)[0]}/{name}"
        finally:
            asyncio.run(placing._drop_database(self.admin_dsn, name))

    @contextmanager
    def replicas(self, service: str, count: int, dsn: str, prefix: str) -> Iterator[Fleet]:
        env = service_env(self.state, self.kafka, prefix, self.operator_token)
        try:
            with fleet(self.state) as started:
                for n in range(1, count + 1):
                    started.start_service(f"{service}-{n}", service, env, dsn, infra.free_port())
                started.wait_healthy()
                yield started
        finally:
            asyncio.run(limits.delete_topics(self.kafka, prefix))


async def shared_group(bootstrap: str, group: str, members: int) -> list[int]:
    """Wait until ``members`` hold the group's partitions, each some; partitions per member."""
    give_up = time.monotonic() + GROUP_TIMEOUT
    while True:
        state = await describe_group(bootstrap, group)
        if state.stable_with(members):
            return sorted((len(p) for p in state.members.values()), reverse=True)
        if time.monotonic() > give_up:
            raise RuntimeError(f"{group} not shared by {members} within {GROUP_TIMEOUT}s: {state}")
        await asyncio.sleep(0.5)


def round_robin(fires: list[Callable[[], Awaitable[bool]]]) -> Callable[[], Awaitable[bool]]:
    """Each request to the next process, as a load balancer in front of them would."""
    turns = itertools.cycle(fires)

    def fire() -> Awaitable[bool]:
        return next(turns)()

    return fire


async def sweep_placement(
    run: OrdersRun, fire: Callable[[], Awaitable[bool]], pids: dict[str, int], args: Args
) -> None:
    """Rising offered rates until one is not kept up with; CPU per step, kept for the best."""
    await placing.offered_load(args.rates[0], 1.0, fire)  # warm-up: connections, caches, plans
    cpu: dict[float, tuple[float, float]] = {}
    for rate in args.rates:
        before, started = cpu_seconds(pids), time.monotonic()
        step = await placing.offered_load(rate, args.seconds, fire)
        cpu[rate] = _cores(before, cpu_seconds(pids), time.monotonic() - started)
        run.steps.append(step)
        mark = (
            "ok"
            if step.p99 <= P99_BUDGET and _keeps_up(step)
            else "kept up"
            if _keeps_up(step)
            else "--"
        )
        print(
            f"  {run.processes} orders: offered {rate:>5.0f}/s  achieved {step.achieved:>5.0f}/s"
            f"  p50 {step.p50 * 1000:>7.1f} ms  p99 {step.p99 * 1000:>7.1f} ms"
            f"  errors {step.errors:>3}  cores {cpu[rate][0]:.2f}  {mark}",
            flush=True,
        )
        if not _keeps_up(step):
            break
    best = run.best(within_budget=False)
    if best is not None:
        run.cores, run.client_cores = cpu[best.rate]


def _cores(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> tuple[float, float]:
    """CPU of the service processes and of this one over ``seconds``, in cores."""
    used = {name: (after[name] - before.get(name, after[name])) / seconds for name in after}
    client = used.pop("load generator and partners", 0.0)
    return sum(used.values()), client


async def relay_drain(dsn: str, rows: int) -> float:
    """``rows`` outbox rows committed at once; events/s until the relay marked them all sent."""
    payload = b"x" * 1500  # about an OrderPlaced envelope's size
    records = [
        (new_id("evt"), orders.TOPIC.name, new_id("ord"), "bench", payload) for _ in range(rows)
    ]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "outbox", records=records, columns=("event_id", "topic", "key", "event_type", "payload")
        )
        started = time.perf_counter()
        while True:  # another process marks them: polled
            if not await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
                return rows / (time.perf_counter() - started)
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def customer_token(private_pem: bytes) -> str:
    return TokenIssuer(private_pem, ttl=timedelta(hours=2)).issue(new_id("cus"), "customer", 1)


def measure_orders(run: Run, count: int, token: str, args: Args) -> OrdersRun:
    result = OrdersRun(count)
    prefix = run.prefix("o", count)
    with run.database("orders", count) as dsn:
        asyncio.run(placing.prepare(dsn))
        with run.replicas("orders", count, dsn, prefix) as started:

            async def measure() -> None:
                result.partitions = await shared_group(
                    run.kafka, prefix + ORDERS_CATALOG_GROUP, count
                )
                urls = [f"{started.url(f'orders-{n}')}/v1/orders" for n in range(1, count + 1)]
                headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0), headers=headers,
                    timeout=aiohttp.ClientTimeout(total=60),
                ) as session:  # fmt: skip
                    fire = round_robin([placing.http_post(session, url, PLACEMENT) for url in urls])
                    await sweep_placement(result, fire, started.pids(), args)
                result.relay_per_s = await relay_drain(dsn, args.outbox)
                print(
                    f"  {count} orders: relay published {args.outbox:,} outbox rows at "
                    f"{result.relay_per_s:,.0f} events/s",
                    flush=True,
                )

            asyncio.run(measure())
    return result


def measure_settlement(
    run: Run, count: int, history: list[OrderEvent], args: Args
) -> SettlementRun:
    result = SettlementRun(count)
    prefix = run.prefix("s", count)
    group = prefix + SETTLEMENT_GROUP
    with (
        run.database("settlement", count) as dsn,
        run.replicas("settlement", count, dsn, prefix) as started,
    ):

        async def measure() -> None:
            result.partitions = await shared_group(run.kafka, group, count)
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
            try:
                before, started_at = cpu_seconds(started.pids()), time.monotonic()
                await publish(run.kafka, prefix + orders.TOPIC.name, history)
                seconds, first = await _catch_up(pool, len(history))
                result.cores, result.client_cores = _cores(
                    before, cpu_seconds(started.pids()), time.monotonic() - started_at
                )
                result.seconds = seconds
                result.per_s = (len(history) - first) / seconds
                result.postings = await pool.fetchval("SELECT count(*) FROM postings")
                result.trial_balance_zero = not await pool.fetchval(
                    "SELECT count(*) FROM (SELECT currency FROM postings GROUP BY currency"
                    " HAVING sum(amount) <> 0) unbalanced"
                )
            finally:
                await pool.close()
            print(
                f"  {count} settlement: {len(history):,} events in {result.seconds:.1f} s,"
                f" {result.per_s:,.0f} events/s, cores {result.cores:.2f}",
                flush=True,
            )

        asyncio.run(measure())
    return result


async def _catch_up(pool: asyncpg.Pool, total: int) -> tuple[float, int]:
    """Seconds from the first applied event until ``total`` are, and how many the first poll saw."""
    give_up = time.monotonic() + CATCH_UP_TIMEOUT
    first: tuple[float, int] | None = None
    while True:
        applied: int = await pool.fetchval(
            "SELECT count(*) FROM processed_events WHERE consumer = $1", LEDGER
        )
        if first is None and applied:
            first = (time.perf_counter(), applied)
        if applied >= total:
            assert first is not None
            return time.perf_counter() - first[0], first[1]
        if time.monotonic() > give_up:
            raise RuntimeError(f"settlement applied {applied} of {total} events")
        await asyncio.sleep(0.05)


def ratio(one: float | None, two: float | None) -> str:
    return f"{two / one:.2f}" if one and two is not None else "-"


def _rate(step: Step | None) -> tuple[float | None, str]:
    if step is None:
        return None, "none"
    return step.achieved, f"{step.achieved:,.0f} (p99 {step.p99 * 1000:,.0f} ms)"


def table(placed: dict[int, OrdersRun], settled: dict[int, SettlementRun]) -> list[str]:
    """The figures side by side, with the ratio of two processes' to one's."""
    rows: list[tuple[str, float | None, str, float | None, str]] = []
    for label, within in (
        (f"orders placed/s at p99 <= {P99_BUDGET * 1000:.0f} ms", True),
        ("orders placed/s kept up with (any p99)", False),
    ):
        one, two = (_rate(placed[n].best(within)) for n in COUNTS)
        rows.append((label, one[0], one[1], two[0], two[1]))
    rows.append(
        ("CPU of the orders processes there, cores", placed[1].cores, f"{placed[1].cores:.2f}",
         placed[2].cores, f"{placed[2].cores:.2f}")
    )  # fmt: skip
    relay = [placed[n].relay_per_s for n in COUNTS]
    rows.append(("orders relay, outbox events/s", relay[0], f"{relay[0]:,.0f}",
                 relay[1], f"{relay[1]:,.0f}"))  # fmt: skip
    catch_up = [settled[n].per_s for n in COUNTS]
    rows.append(("settlement catch-up, events/s", catch_up[0], f"{catch_up[0]:,.0f}",
                 catch_up[1], f"{catch_up[1]:,.0f}"))  # fmt: skip
    cores = [settled[n].cores for n in COUNTS]
    rows.append(("CPU of the settlement processes, cores", cores[0], f"{cores[0]:.2f}",
                 cores[1], f"{cores[1]:.2f}"))  # fmt: skip
    lines = [
        "| figure | 1 process | 2 processes | 2 / 1 |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {name} | {a} | {b} | {ratio(x, y)} |" for name, x, a, y, b in rows),
    ]
    for name, runs in (("orders.catalog-copy", placed), ("settlement-ledger", settled)):
        held = ["+".join(str(p) for p in runs[n].partitions) for n in COUNTS]
        lines.append(f"| partitions per member of `{name}` | {held[0]} | {held[1]} | |")
    return lines


def markdown(placed: dict[int, OrdersRun], settled: dict[int, SettlementRun], args: Args) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    books = [settled[n] for n in COUNTS]
    same = books[0].postings == books[1].postings and all(b.trial_balance_zero for b in books)
    steps = []
    for n in COUNTS:
        for s in placed[n].steps:
            steps.append(
                f"| {n} | {s.rate:,.0f} | {s.achieved:,.0f} | {s.p50 * 1000:,.1f} |"
                f" {s.p99 * 1000:,.1f} | {s.errors} |"
            )
    return "\n".join([
        "# One process against two: orders and settlement",
        "",
        f"`make bench-scale`, {when}, {os.cpu_count()} cores shared by the services, Kafka,"
        " PostgreSQL and the load generator (and whatever else the machine was running:"
        " the figures are noisy; compare the ratios, taken minutes apart in one run)."
        " A second process is a second replica: same database, same consumer groups."
        f" Placement: open loop, {args.seconds:g} s per offered rate, round robin over the"
        f" processes. Relay: {args.outbox:,} outbox rows committed at once. Settlement:"
        f" {args.events:,} order events published once both members held partitions,"
        " timed from the first applied event until the ledger had applied all.",
        "",
        *table(placed, settled),
        "",
        f"Both settlement runs booked {books[0].postings:,} and {books[1].postings:,} postings;"
        f" trial balance zero: {'yes' if same else 'NO'}.",
        "",
        "## Placement, step by step",
        "",
        "| processes | offered/s | achieved/s | p50 ms | p99 ms | errors |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        *steps,
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="25,50,75,100,150,200,300,400,600")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--outbox", type=int, default=10_000, help="rows for the relay")
    parser.add_argument("--events", type=int, default=60_000, help="order events to settle")
    parser.add_argument("--kafka", default=os.environ.get("TEST_KAFKA_BOOTSTRAP"))
    parser.add_argument("--postgres-dsn", default=os.environ.get("TEST_PG_DSN"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parsed = parser.parse_args()
    args = Args(
        rates=[float(r) for r in parsed.rates.split(",")],
        seconds=parsed.seconds,
        outbox=parsed.outbox,
        events=parsed.events,
        out=parsed.out,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    history = order_history(args.events)
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-") as folder,
        infrastructure(parsed.kafka, parsed.postgres_dsn) as (kafka, admin_dsn),
    ):
        state = Path(folder)
        run = Run(kafka, admin_dsn, state, secrets.token_hex(4), secrets.token_urlsafe(24))
        token = customer_token(signing_keys(state))
        placed = {n: measure_orders(run, n, token, args) for n in COUNTS}
        settled = {n: measure_settlement(run, n, history, args) for n in COUNTS}
    print()
    print("\n".join(table(placed, settled)))
    (args.out / "scale-out.md").write_text(markdown(placed, settled, args))
    print(f"\nwrote {args.out / 'scale-out.md'}")


if __name__ == "__main__":
    main()
