"""One process against two, of orders and of settlement, in one run: ``make bench-scale``.

    uv run python -m bench.scale_out [--rates 25,50,...] [--seconds 3] [--outbox 10000]
                                     [--events 60000]

The services run as real processes (``python -m services.<name>``, see
``bench/processes.py``) over the Kafka and PostgreSQL of ``TEST_KAFKA_BOOTSTRAP``
and ``TEST_PG_DSN`` (neither set: a throwaway broker and PostgreSQL of its own).
A second process of a service is a second replica: same database, same topic
prefix, so the same consumer groups.  Each configuration gets a fresh database
and prefix, and is measured once the broker describes its consumer group as
shared (every member holding partitions).

* **Orders placement.**  The orders database is seeded with a three-partner
  offering (``bench.orders_place.prepare``: no catalog needed).
  ``POST /v1/orders`` goes round robin to the orders processes, open loop, at
  rising offered rates of ``--seconds`` each, until a step falls behind
  (achieved < 97 % of offered) or errs.  Reported: the best rate with p99 <=
  50 ms, and the best kept up with at any p99.
* **Orders relay.**  ``--outbox`` rows committed at once into the outbox (after
  the placements' own events are out); the time until every one is marked sent,
  the better of two drains.
  One relay per database publishes (an advisory lock elects it): the bench
  counts the lock's holders while it drains.
* **Settlement catch-up.**  ``--events`` order events
  (``bench.settlement_backlog``'s history: placed, confirmed with three co-sell
  charges, usage, refunds, fulfilled) are published once to an orders topic
  partitioned as ``shared/contracts/orders.py`` declares (6).  Then, per
  count, the processes start with a consumer group and a database of their
  own; timed from when the broker shows the group shared (what the first
  member applied alone before is left out) until the ledger's order positions
  count every event.  Rounds 1, 2, 2, 1 processes; each count's fastest.

Placement steps alternate between the configurations at each rate (both are
up at once; the other one first at the next rate), and each relay drains
twice (1, 2, 2, 1), so a neighbour's burst on a shared machine falls on both
about alike.

Beside each figure: the CPU the service's processes used (1.00 = one core),
how busy the whole machine was, and what the service's database connections
were doing (``pg_stat_activity``), which tells a process that waits from one
that computes.  Writes ``bench/results/scale-out.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from bench.pipeline_load import DatabaseWatch
from bench.processes import POOL_SIZE, Fleet, fleet, service_env, signing_keys
from bench.settlement_backlog import order_history, publish
from deploy.local import infra
from services.settlement.consumers import CONSUMER as LEDGER
from services.settlement.handlers import OrderEvent
from shared import kafka
from shared.contracts import orders
from shared.ids import new_id
from shared.tokens import TokenIssuer
from tests.support.stack import ORDERS_CATALOG_GROUP, SETTLEMENT_GROUP, describe_group

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
COUNTS = (1, 2)
PLACEMENT = msgspec.json.encode({"lines": [{"offering_id": placing.OFFERING_ID, "quantity": 1}]})
GROUP_TIMEOUT = 90.0  # a join waits for the others' next poll; a shared broker is slow
DRAIN_TIMEOUT = 600.0
# Rounds one after another, ABBA, so neither count always goes first and a drift
# in the machine's load falls on both about alike; each count's best is reported
# (others' work on the machine only ever slows a round down).
RELAY_ORDER = (1, 2, 2, 1)
SETTLEMENT_ORDER = (1, 2, 2, 1)
THIS_PROCESS = "load generator and partners"  # how bench.pipeline.cpu_seconds names it


@dataclass(frozen=True)
class Args:
    rates: list[float]
    seconds: float
    outbox: int
    events: int
    out: Path


@dataclass(frozen=True)
class Cpu:
    service: float  # cores the service's processes used
    client: float  # cores this process used (load generator, publisher, polls)
    machine: float  # share of all the machine's cores busy, whoever used them


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


class CpuMeter:
    """CPU used between ``start`` and ``read``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start()

    def start(self) -> None:
        self.processes = cpu_seconds(self.pids)
        self.machine = _machine_jiffies()
        self.at = time.monotonic()

    def read(self) -> Cpu:
        seconds = time.monotonic() - self.at
        after, (busy, total) = cpu_seconds(self.pids), _machine_jiffies()
        used = {n: (after[n] - self.processes.get(n, after[n])) / seconds for n in after}
        client = used.pop(THIS_PROCESS, 0.0)
        machine = (busy - self.machine[0]) / max(1, total - self.machine[1])
        return Cpu(sum(used.values()), client, machine)


Activity = dict[str, float]  # what the service's connections did -> mean count


@dataclass
class OrdersRun:
    processes: int
    partitions: list[int] = field(default_factory=list)  # per member, as the broker assigned
    steps: list[Step] = field(default_factory=list)
    cpu: dict[float, Cpu] = field(default_factory=dict)  # per offered rate
    database: dict[float, Activity] = field(default_factory=dict)
    relay_per_s: float = 0.0
    relay_leaders: int = 0

    def best(self, within_budget: bool) -> Step | None:
        kept = [
            s for s in self.steps if _keeps_up(s) and (s.p99 <= P99_BUDGET or not within_budget)
        ]
        return max(kept, key=lambda s: s.achieved, default=None)


@dataclass
class SettlementRun:
    processes: int
    partitions: list[int] = field(default_factory=list)
    per_s: float = 0.0
    timed_events: int = 0  # applied after publishing ended: what the rate is over
    cpu: Cpu | None = None
    database: Activity = field(default_factory=dict)
    postings: int = 0
    balanced: bool = False
    rounds: list[float] = field(default_factory=list)  # every round's events/s, this one's too


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
    def database(self, what: str) -> Iterator[str]:
        name = f"bench_scale_{what}_{self.suffix}"
        asyncio.run(placing._create_database(self.admin_dsn, name))
        try:
            yield f"{self.admin_dsn.rsplit('/', 1)[0]}/{name}"
        finally:
            asyncio.run(placing._drop_database(self.admin_dsn, name))

    @contextmanager
    def topics(self, prefix: str) -> Iterator[str]:
        """The prefix's topics (the services or the bench create them), deleted afterwards."""
        try:
            yield prefix
        finally:
            asyncio.run(limits.delete_topics(self.kafka, prefix))

    @contextmanager
    def replicas(
        self, service: str, count: int, dsn: str, prefix: str, **settings: str
    ) -> Iterator[Fleet]:
        env = {**service_env(self.state, self.kafka, prefix, self.operator_token), **settings}
        with fleet(self.state) as started:
            for n in range(1, count + 1):
                started.start_service(f"{service}-{n}", service, env, dsn, infra.free_port())
            started.wait_healthy()
            yield started

    async def watch(self, dsn: str) -> tuple[DatabaseWatch, asyncpg.Pool]:
        admin = await asyncpg.create_pool(self.admin_dsn, min_size=1, max_size=1)
        return DatabaseWatch(admin, {"service": dsn.rsplit("/", 1)[1]}), admin


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


def placement(session: aiohttp.ClientSession, started: Fleet) -> Callable[[], Awaitable[bool]]:
    """``POST /v1/orders`` to each of the processes in turn."""
    return round_robin(
        [
            placing.http_post(session, f"{started.url(p)}/v1/orders", PLACEMENT)
            for p in started.ports
        ]
    )


@dataclass
class Placing:
    """One orders configuration under load: where to send, what to meter."""

    run: OrdersRun
    fire: Callable[[], Awaitable[bool]]
    meter: CpuMeter
    behind: int = 0  # steps in a row not kept up with


async def sweep_placement(placings: list[Placing], watch: DatabaseWatch, args: Args) -> None:
    """Rising offered rates, each configuration in turn at each rate.

    Turn by turn, the other one first at the next rate, so a neighbour's burst
    on the shared machine falls on both about alike.  A configuration stops
    after two steps in a row it did not keep up with (one can be someone
    else's noise).
    """
    for placing_ in placings:  # warm-up: every process's connections, caches, plans
        await placing.offered_load(args.rates[0], 2.0, placing_.fire)
    for turn, rate in enumerate(args.rates):
        going = [p for p in placings if p.behind < 2]
        if not going:
            return
        for one in going if turn % 2 == 0 else reversed(going):
            one.meter.start()
            watch.take()
            step = await placing.offered_load(rate, args.seconds, one.fire)
            label = str(one.run.processes)
            one.run.cpu[rate], one.run.database[rate] = (
                one.meter.read(),
                watch.take().get(label, {}),
            )
            one.run.steps.append(step)
            one.behind = 0 if _keeps_up(step) else one.behind + 1
            cpu = one.run.cpu[rate]
            print(
                f"  {label} orders: offered {rate:>5.0f}/s  achieved {step.achieved:>5.0f}/s"
                f"  p50 {step.p50 * 1000:>7.1f} ms  p99 {step.p99 * 1000:>7.1f} ms"
                f"  errors {step.errors:>3}  orders cores {cpu.service:.2f}"
                f"  machine {cpu.machine:.0%}  {'kept up' if not one.behind else 'behind'}",
                flush=True,
            )


async def relay_drain(dsn: str, rows: int) -> tuple[float, int]:
    """``rows`` outbox rows committed at once: events/s until all are sent, most relays seen."""
    payload = b"x" * 1500  # about an OrderPlaced envelope's size
    records = [
        (new_id("evt"), orders.TOPIC.name, new_id("ord"), "bench", payload) for _ in range(rows)
    ]
    conn = await asyncpg.connect(dsn)
    try:
        await _until_sent(conn)  # the placements' own events first
        await conn.copy_records_to_table(
            "outbox", records=records, columns=("event_id", "topic", "key", "event_type", "payload")
        )
        started = time.perf_counter()
        leaders = await _until_sent(conn)
        return rows / (time.perf_counter() - started), leaders
    finally:
        await conn.close()


async def _until_sent(conn: asyncpg.Connection[asyncpg.Record]) -> int:
    """Poll until the outbox has nothing unsent; the most relays seen holding the lock."""
    leaders = 0
    give_up = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < give_up:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS unsent,"
            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            "  AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
            " AS leaders"
        )
        assert row is not None
        leaders = max(leaders, int(row["leaders"]))
        if not row["unsent"]:
            return leaders
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the outbox was not drained within {DRAIN_TIMEOUT}s")


def customer_token(private_pem: bytes) -> str:
    return TokenIssuer(private_pem, ttl=timedelta(hours=2)).issue(new_id("cus"), "customer", 1)


def measure_orders(run: Run, token: str, args: Args) -> dict[int, OrdersRun]:
    """Both configurations up at once, each on its own database and prefix, measured in turns."""
    with contextlib.ExitStack() as up:
        dsns: dict[int, str] = {}
        fleets: dict[int, Fleet] = {}
        prefixes: dict[int, str] = {}
        for n in COUNTS:
            dsns[n] = up.enter_context(run.database(f"orders{n}"))
            prefixes[n] = up.enter_context(run.topics(run.prefix("o", n)))
            asyncio.run(placing.prepare(dsns[n]))
            fleets[n] = up.enter_context(run.replicas("orders", n, dsns[n], prefixes[n]))
        return asyncio.run(_measure_orders(run, token, args, dsns, fleets, prefixes))


async def _measure_orders(
    run: Run,
    token: str,
    args: Args,
    dsns: dict[int, str],
    fleets: dict[int, Fleet],
    prefixes: dict[int, str],
) -> dict[int, OrdersRun]:
    results = {n: OrdersRun(n) for n in COUNTS}
    for n in COUNTS:
        results[n].partitions = await shared_group(run.kafka, prefixes[n] + ORDERS_CATALOG_GROUP, n)
    admin = await asyncpg.create_pool(run.admin_dsn, min_size=1, max_size=1)
    watch = DatabaseWatch(admin, {str(n): dsns[n].rsplit("/", 1)[1] for n in COUNTS})
    watching = asyncio.create_task(watch.watch())
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), headers=headers,
            timeout=aiohttp.ClientTimeout(total=60),
        ) as session:  # fmt: skip
            placings = [
                Placing(results[n], placement(session, fleets[n]), CpuMeter(fleets[n].pids()))
                for n in COUNTS
            ]
            await sweep_placement(placings, watch, args)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await admin.close()
    for n in RELAY_ORDER:
        per_s, leaders = await relay_drain(dsns[n], args.outbox)
        print(
            f"  {n} orders: relay published {args.outbox:,} outbox rows at {per_s:,.0f}"
            f" events/s; relays leading: {leaders}",
            flush=True,
        )
        results[n].relay_per_s = max(results[n].relay_per_s, per_s)
        results[n].relay_leaders = max(results[n].relay_leaders, leaders)
    return results


async def backlog(bootstrap: str, prefix: str, history: list[OrderEvent]) -> None:
    """The orders topic, partitioned as declared, holding ``history`` before any ledger reads."""
    await kafka.ensure_topics(bootstrap, kafka.topic_specs([orders.TOPIC], prefix))
    started = time.perf_counter()
    await publish(bootstrap, prefix + orders.TOPIC.name, history)
    print(f"published {len(history):,} order events in {time.perf_counter() - started:.1f} s")


def measure_settlement(run: Run, count: int, prefix: str, total: int, round_: int) -> SettlementRun:
    """The ledger's group of ``count`` catching up on the backlog, from when it is shared.

    Each count reads the backlog with a group (and a database) of its own.  The
    first member to join starts alone; what it applied before the second one
    joined and the rebalance settled is left out of the rate.
    """
    result = SettlementRun(count)
    group = f"{SETTLEMENT_GROUP}-{count}-{round_}"
    with (
        run.database(f"settlement{count}_{round_}") as dsn,
        run.replicas("settlement", count, dsn, prefix, SETTLEMENT_CONSUMER_GROUP=group) as started,
    ):

        async def measure() -> None:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
            watch, admin = await run.watch(dsn)
            try:
                result.partitions = await shared_group(run.kafka, prefix + group, count)
                meter, before = CpuMeter(started.pids()), await _applied(pool)
                watch.take()
                watching = asyncio.create_task(watch.watch())
                try:
                    started_at = time.perf_counter()
                    await _until_applied(pool, total)
                    seconds = time.perf_counter() - started_at
                    result.cpu = meter.read()
                    result.database = watch.take().get("service", {})
                finally:
                    watching.cancel()
                    await asyncio.gather(watching, return_exceptions=True)
                result.timed_events = total - before
                result.per_s = result.timed_events / seconds
                result.postings = await pool.fetchval("SELECT count(*) FROM postings")
                result.balanced = not await pool.fetchval(
                    "SELECT count(*) FROM (SELECT currency FROM postings GROUP BY currency"
                    " HAVING sum(amount) <> 0) unbalanced"
                )
            finally:
                await pool.close()
                await admin.close()
            print(
                f"  {count} settlement: {result.timed_events:,} of {total:,} events applied"
                f" once the group was shared, {result.per_s:,.0f} events/s,"
                f" settlement cores {result.cpu.service:.2f}, machine {result.cpu.machine:.0%}",
                flush=True,
            )
            if result.timed_events < total // 4:
                print("  (most events were applied before the group was shared: raise --events)")

        asyncio.run(measure())
    return result


def best_catch_up(runs: list[SettlementRun]) -> dict[int, SettlementRun]:
    """Per count, its fastest round, with every round's rate kept beside it."""
    best: dict[int, SettlementRun] = {}
    for one in runs:
        kept = best.get(one.processes)
        if kept is None or one.per_s > kept.per_s:
            best[one.processes] = one
    same_books = len({r.postings for r in runs}) == 1 and all(r.balanced for r in runs)
    for count, kept in best.items():
        kept.rounds = [r.per_s for r in runs if r.processes == count]
        kept.balanced = same_books
    return best


async def _applied(pool: asyncpg.Pool) -> int:
    """Order events the ledger applied: each order's position counts its events (1, 2, 3 ...)."""
    applied: int = await pool.fetchval(
        "SELECT coalesce(sum(sequence), 0)::bigint FROM consumer_positions WHERE consumer = $1",
        LEDGER,
    )
    return applied


async def _until_applied(pool: asyncpg.Pool, total: int) -> None:
    give_up = time.monotonic() + DRAIN_TIMEOUT
    while (applied := await _applied(pool)) < total:
        if time.monotonic() > give_up:
            raise RuntimeError(f"settlement applied {applied} of {total} events")
        await asyncio.sleep(0.05)


def ratio(one: float | None, two: float | None) -> str:
    return f"{two / one:.2f}" if one and two is not None else "-"


def _placed(step: Step | None) -> tuple[float | None, str]:
    if step is None:
        return None, "none"
    return step.achieved, f"{step.achieved:,.0f} (p99 {step.p99 * 1000:,.0f} ms)"


def _most(steps: list[Step]) -> tuple[float | None, str]:
    """The most any step achieved: a step that fell behind still placed this many a second."""
    most = max((s.achieved for s in steps), default=None)
    return most, "none" if most is None else f"{most:,.0f}"


def _busy(activity: Activity) -> tuple[float, str]:
    """Busy connections (summed over the processes) and the two commonest activities."""
    top = sorted(activity.items(), key=lambda kv: -kv[1])[:2]
    total = sum(activity.values())
    return total, f"{total:.1f} ({', '.join(f'{k} {v:.1f}' for k, v in top) or 'none'})"


Row = tuple[str, float | None, str, float | None, str]


def _per(amount: float, per: float, shown: str) -> tuple[float | None, str]:
    """``amount / per``, or nothing when there was nothing to divide by."""
    if not per:
        return None, "-"
    return amount / per, shown.format(amount / per)


def _row(name: str, values: list[tuple[float | None, str]]) -> Row:
    (x, a), (y, b) = values
    return name, x, a, y, b


def table(placed: dict[int, OrdersRun], settled: dict[int, SettlementRun]) -> list[str]:
    """The figures side by side, with the ratio of two processes' to one's."""
    kept = {n: placed[n].best(within_budget=False) for n in COUNTS}
    at_kept = {n: placed[n].cpu.get(s.rate) if s else None for n, s in kept.items()}
    no_cpu = Cpu(0.0, 0.0, 0.0)
    orders_cpu = [at_kept[n] or no_cpu for n in COUNTS]
    settlement_cpu = [settled[n].cpu or no_cpu for n in COUNTS]
    orders_db = [placed[n].database.get(s.rate, {}) if s else {} for n, s in kept.items()]
    rows: list[Row] = [
        _row(f"orders placed/s at p99 <= {P99_BUDGET * 1000:.0f} ms",
             [_placed(placed[n].best(within_budget=True)) for n in COUNTS]),
        _row("orders placed/s kept up with (any p99)", [_placed(kept[n]) for n in COUNTS]),
        _row("orders placed/s at most, any step (kept up or not)",
             [_most(placed[n].steps) for n in COUNTS]),
        _row("  there: CPU of the orders processes, cores",
             [(c.service, f"{c.service:.2f}") for c in orders_cpu]),
        _row("  there: their CPU per placement, ms",
             [_per(c.service * 1000, s.achieved if s else 0.0, "{:.2f}")
              for c, s in zip(orders_cpu, kept.values(), strict=True)]),
        _row("  there: whole machine busy", [(c.machine, f"{c.machine:.0%}") for c in orders_cpu]),
        _row(f"  there: orders DB connections busy (pool {POOL_SIZE} per process)",
             [_busy(a) for a in orders_db]),
        _row("orders relay, outbox events/s",
             [(placed[n].relay_per_s, f"{placed[n].relay_per_s:,.0f}") for n in COUNTS]),
        _row("  relays leading (advisory lock holders)",
             [(placed[n].relay_leaders, str(placed[n].relay_leaders)) for n in COUNTS]),
        _row("settlement catch-up, events/s",
             [(settled[n].per_s, f"{settled[n].per_s:,.0f}") for n in COUNTS]),
        _row("  every round, events/s",
             [(None, " / ".join(f"{r:,.0f}" for r in settled[n].rounds)) for n in COUNTS]),
        _row("  events timed (applied once the group was shared)",
             [(settled[n].timed_events, f"{settled[n].timed_events:,}") for n in COUNTS]),
        _row("  CPU of the settlement processes, cores",
             [(c.service, f"{c.service:.2f}") for c in settlement_cpu]),
        _row("  events per second of their CPU",
             [_per(settled[n].per_s, c.service, "{:,.0f}")
              for n, c in zip(COUNTS, settlement_cpu, strict=True)]),
        _row("  whole machine busy", [(c.machine, f"{c.machine:.0%}") for c in settlement_cpu]),
        _row("  settlement DB connections busy", [_busy(settled[n].database) for n in COUNTS]),
    ]  # fmt: skip
    lines = [
        "| figure | 1 process | 2 processes | 2 / 1 |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {name} | {a} | {b} | {ratio(x, y)} |" for name, x, a, y, b in rows),
    ]
    for name, runs in (
        (ORDERS_CATALOG_GROUP, placed),
        (SETTLEMENT_GROUP, settled),
    ):
        held = ["+".join(str(p) for p in runs[n].partitions) for n in COUNTS]
        lines.append(f"| partitions per member of `{name}` | {held[0]} | {held[1]} | |")
    return lines


def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def markdown(
    placed: dict[int, OrdersRun],
    settled: dict[int, SettlementRun],
    args: Args,
    load: tuple[str, str],
) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    books = [settled[n] for n in COUNTS]
    agree = all(b.balanced for b in books)
    steps = [
        f"| {n} | {s.rate:,.0f} | {s.achieved:,.0f} | {s.p50 * 1000:,.1f} | {s.p99 * 1000:,.1f}"
        f" | {s.errors} | {placed[n].cpu[s.rate].service:.2f} |"
        f" {placed[n].cpu[s.rate].machine:.0%} |"
        for n in COUNTS
        for s in placed[n].steps
    ]
    return "\n".join([
        "# One process against two: orders and settlement",
        "",
        f"`make bench-scale`, {when}, {os.cpu_count()} cores shared by the services, Kafka,"
        " PostgreSQL and the load generator, and by whatever else the machine was running"
        f" (load average {load[0]} before, {load[1]} after; the 'whole machine busy' rows):"
        " the figures are noisy; compare the ratios, taken minutes apart in one run."
        " A second process is a second replica: same database, same consumer groups,"
        " measured once the broker showed the group shared."
        f" Placement: open loop, {args.seconds:g} s per offered rate, round robin over the"
        f" processes. Relay: {args.outbox:,} outbox rows committed at once. Settlement: a"
        f" backlog of {args.events:,} order events, timed from when the group was shared until"
        " the ledger had applied every one (the rows below the figure say how many that was).",
        "",
        *table(placed, settled),
        "",
        f"Every settlement round booked the same postings ({books[0].postings:,}) and its"
        f" trial balance is zero: {'yes' if agree else 'NO'}.",
        "",
        "## Placement, step by step",
        "",
        "| processes | offered/s | achieved/s | p50 ms | p99 ms | errors | orders cores"
        " | machine busy |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
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
    load_before = load_average()
    history = order_history(args.events)
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-") as folder,
        infrastructure(parsed.kafka, parsed.postgres_dsn) as (bootstrap, admin_dsn),
    ):
        state = Path(folder)
        run = Run(bootstrap, admin_dsn, state, secrets.token_hex(4), secrets.token_urlsafe(24))
        token = customer_token(signing_keys(state))
        placed = measure_orders(run, token, args)
        with run.topics(run.prefix("s", 0)) as prefix:
            asyncio.run(backlog(bootstrap, prefix, history))
            settled = best_catch_up(
                [
                    measure_settlement(run, n, prefix, len(history), round_)
                    for round_, n in enumerate(SETTLEMENT_ORDER)
                ]
            )
    print()
    print("\n".join(table(placed, settled)))
    (args.out / "scale-out.md").write_text(
        markdown(placed, settled, args, (load_before, load_average()))
    )
    print(f"\nwrote {args.out / 'scale-out.md'}")


if __name__ == "__main__":
    main()
