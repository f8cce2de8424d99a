"""The whole pipeline under increasing offered load, beside its raw limits: ``make bench-pipeline``.

    uv run python -m bench.pipeline [--rates 25,50,100,200,400,800] [--seconds 4]
                                    [--profile orders --profile-at 100]
    uv run python -m bench.pipeline --floor-only [--floor-orders 1000]

Catalog, orders and settlement run as real processes (``python -m
services.<name>``) over the Kafka and PostgreSQL given by ``--kafka`` and
``--postgres-dsn`` (default: ``TEST_KAFKA_BOOTSTRAP`` and ``TEST_PG_DSN``;
neither set: a throwaway broker and a durable PostgreSQL of its own).  The
operator onboards an ISV, a managed-service provider and an integrator through
the catalog's HTTP API; they agree and publish a three-partner offering;
customers sign up.  Simulated partners read ``orders.fulfillments`` and accept
every request, and complete once ``orders.orders`` says the order is confirmed.

Each step places orders open loop at one rate for ``--seconds`` (latency counts
from when a request was due), then waits for settlement to charge them.  An
order counts end to end when settlement's ledger holds its charges, read
read-only from settlement's ``journal_entries``: ``booked_at`` is the
OrderConfirmed event's time and ``recorded_at`` the booking transaction's.
Over each step's placing and draining, the CPU every component used
(``bench.pipeline_cpu``: each service, the load generator, PostgreSQL's
backends by database, the Kafka broker, the whole machine) is divided by the
orders charged.  The floor per order (``bench.pipeline_floor``: an order's
HTTP exchanges, database transactions and Kafka events done bare) follows in
the same run, and ``bench/results/pipeline.md`` and ``pipeline.png`` are written.
``--floor-only`` places just enough orders (one short step at 10/s) to count what
an order writes and publishes, measures the floor, prints it and writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from bench import pipeline_floor as floor
from bench import pipeline_limits as limits
from bench import pipeline_report as report
from bench.orders_place import _create_database, _drop_database, prepare
from bench.pipeline_cpu import CpuMeter, ceiling, pid_listening
from bench.pipeline_load import (
    Charged,
    Customers,
    DatabaseWatch,
    PartnerDesk,
    charged,
    open_catalog,
    partner_feeds,
)
from bench.plumbing import servers
from bench.processes import fleet, service_env, signing_keys
from deploy.demo.client import Marketplace
from deploy.local import infra
from shared import db, runtime
from shared.contracts import fulfillments, orders

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SERVICES = ("catalog", "orders", "settlement")
POOL_SIZE = report.POOL_SIZE
# A step whose orders are not all charged this long after its last placement is
# past what the pipeline sustains: later steps would only measure the backlog.
DRAIN_SECONDS = 25.0
# What a customer's placement sends (one line); the floor's first exchange carries it.
PLACEMENT_BODY = b'{"lines": [{"offering_id": "off_01benchjointoffering0000", "quantity": 1}]}'


@dataclass
class Stack:
    kafka: str
    prefix: str
    operator_token: str
    urls: dict[str, str]
    dsns: dict[str, str]
    pids: dict[str, int]
    bare_url: str
    admin_dsn: str

    def meter(self, processes: dict[str, int], databases: list[str]) -> CpuMeter:
        """A meter of ``processes`` (this one as the load generator), the broker, and the
        PostgreSQL backends of ``databases`` (services' names, "bare")."""
        broker = pid_listening(_port(self.kafka.split(",")[0], 9092))
        postmaster = pid_listening(urlsplit(self.admin_dsn).port or 5432)
        for what, pid in (("the Kafka broker", broker), ("PostgreSQL", postmaster)):
            if pid is None:
                print(f"  {what}'s process is not found (not local?): its CPU is not counted")
        own = {floor.LOAD: os.getpid(), **processes}
        return CpuMeter(
            processes=own if broker is None else {**own, floor.KAFKA: broker},
            postmaster=postmaster,
            databases={self.dsns[d].rsplit("/", 1)[1]: f"postgres {d}" for d in databases},
        )


def _port(address: str, default: int) -> int:
    _, _, port = address.rpartition(":")
    return int(port) if port.isdigit() else default


@contextmanager
def infrastructure(kafka: str | None, admin_dsn: str | None) -> Iterator[tuple[str, str]]:
    if kafka and admin_dsn:
        yield kafka, admin_dsn
        return
    with servers() as (own_kafka, own_admin_dsn):  # a throwaway broker, a durable PostgreSQL
        yield own_kafka, own_admin_dsn


@contextmanager
def running_stack(state: Path, kafka: str, admin_dsn: str) -> Iterator[Stack]:
    suffix = secrets.token_hex(4)
    base = admin_dsn.rsplit("/", 1)[0]
    names = {s: f"bench_pipe_{s}_{suffix}" for s in (*SERVICES, "bare")}
    for name in names.values():
        asyncio.run(_create_database(admin_dsn, name))
    dsns = {s: f"{base}/{name}" for s, name in names.items()}
    signing_keys(state)
    operator_token = secrets.token_urlsafe(24)
    prefix = f"benchpipe{suffix}."
    env = service_env(state, kafka, prefix, operator_token)
    bare_port = infra.free_port()
    asyncio.run(prepare(dsns["bare"]))
    try:
        with fleet(state) as started:
            for service in SERVICES:
                started.start_service(service, service, env, dsns[service], infra.free_port())
            started.start("bare", "-m", "bench.orders_bare", str(bare_port))
            # The first order, charged end to end before the load starts, proves the rest.
            started.wait_healthy()
            yield Stack(
                kafka=kafka,
                prefix=prefix,
                operator_token=operator_token,
                urls={s: started.url(s) for s in SERVICES},
                dsns=dsns,
                pids=started.pids(),
                bare_url=f"http://127.0.0.1:{bare_port}/bare",
                admin_dsn=admin_dsn,
            )
    finally:
        for name in names.values():
            asyncio.run(_drop_database(admin_dsn, name))
        asyncio.run(limits.delete_topics(kafka, prefix))


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User plus system CPU seconds each process has used so far (Linux /proc), this one too."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for name, pid in {**pids, floor.LOAD: os.getpid()}.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used[name] = (int(fields[11]) + int(fields[12])) / ticks
    return used


def start_profiler(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on one service for ``seconds``; None (and why) when it cannot attach."""
    py_spy = shutil.which("py-spy")
    command = [py_spy] if py_spy else ["uv", "run", "--with", "py-spy", "py-spy"]
    try:
        return subprocess.Popen(
            [*command, "record", "-d", str(seconds), "-r", "50", "-p", str(pid), "-o", str(out),
             "--format", "raw"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
    except OSError as exc:
        print(f"  py-spy not started: {exc}", flush=True)
        return None


async def run_steps(args: argparse.Namespace, stack: Stack, state: Path) -> report.Run:
    rates = [float(r) for r in args.rates.split(",")]
    connector = aiohttp.TCPConnector(limit=2000)
    partner_connector = aiohttp.TCPConnector(limit=300)
    timeout = aiohttp.ClientTimeout(total=60)
    reading_ledger: set[int] = set()  # the ledger reads' backends: the bench's, not settlement's

    async def note_backend(conn: asyncpg.Connection) -> None:
        reading_ledger.add(conn.get_server_pid())

    ledger = await asyncpg.create_pool(
        stack.dsns["settlement"], min_size=1, max_size=2, init=note_backend
    )
    admin = await asyncpg.create_pool(stack.admin_dsn, min_size=1, max_size=1)
    run = report.Run(cores=os.cpu_count() or 0, seconds=args.seconds)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        aiohttp.ClientSession(connector=partner_connector, timeout=timeout) as partner_session,
    ):
        client = Marketplace(session, stack.urls)  # type: ignore[arg-type]
        cast = await open_catalog(client, stack.operator_token, customers=20)
        feeds = await partner_feeds(stack.kafka, stack.prefix)
        desk = PartnerDesk(
            partner_session, stack.urls["orders"], {a.id: a.token for a in cast.partners.values()}
        )
        reading = asyncio.create_task(desk.read(feeds))
        watch = DatabaseWatch(admin, {s: stack.dsns[s].rsplit("/", 1)[1] for s in SERVICES})
        watching = asyncio.create_task(watch.watch())
        customers = Customers(session, stack.urls["orders"], cast)
        meter = stack.meter({s: stack.pids[s] for s in SERVICES}, list(SERVICES))
        meter.own_backends = lambda: reading_ledger
        try:
            first = await customers.first_order()
            await _until_charged(ledger, [first], 60.0)
            print("catalog set up, first order charged; stepping up the load", flush=True)
            profiler: subprocess.Popen[bytes] | None = None
            for rate in rates:
                if args.profile and profiler is None and rate >= args.profile_at:
                    run.profiled = args.profile
                    profiler = start_profiler(
                        stack.pids[args.profile], args.profile_seconds, state / "profile.txt"
                    )
                watch.take()
                before = meter.snapshot()
                placed = await customers.step(rate, args.seconds)
                ids = [p.order_id for p in placed if p.order_id]
                books = await _until_charged(ledger, ids, DRAIN_SECONDS)
                run.usage[rate] = meter.usage_since(before)
                run.database[rate] = watch.take()
                step = report.StepResult.of(rate, args.seconds, placed, books)
                run.steps.append(step)
                print(step.line(), flush=True)
                print(report.cpu_line(run.usage[rate], step.charged, run.cores), flush=True)
                if customers.refusals or desk.failures:
                    print(f"    refusals {dict(customers.refusals)} partners {dict(desk.failures)}")
                    customers.refusals.clear()
                if not step.drained:
                    print("  the step did not drain: the pipeline is past what it sustains")
                    break
            if profiler is not None:
                _, err = profiler.communicate(timeout=args.profile_seconds + 60)
                if profiler.returncode:
                    print(f"  py-spy failed: {err.decode(errors='replace')[-500:]}", flush=True)
                else:
                    raw = (state / "profile.txt").read_text()
                    run.profile = report.hot_spots(raw)
                    (args.out / "pipeline-profile.txt").write_text(raw)  # ignored by git
        finally:
            reading.cancel()
            watching.cancel()
            await asyncio.gather(reading, watching, return_exceptions=True)
            for feed in feeds:
                await feed.stop()
        run.accepted = dict(desk.accepted)
        # A step that did not drain leaves a backlog the services are still working
        # through: measured beside it, the floor would share the CPU with it.
        run.settled = await _quiet(meter, args.settle_seconds)
        await _measure_floor(run, stack, session, args.floor_orders)
    await ledger.close()
    await admin.close()
    return run


async def _until_charged(
    ledger: asyncpg.Pool, order_ids: list[str], within: float
) -> dict[str, Charged]:
    """Settlement's charges of ``order_ids``, polled until all are there or ``within`` s.

    Each poll asks only for the orders not yet seen charged, once a second: the
    journal has no index on order_id, so every poll scans it, and asking for all
    of a big step's orders twice a second cost the database more CPU per order
    than settlement's own booking did.  The figures come from the ledger's own
    timestamps, so polling less often delays only when a step is seen drained.
    """
    give_up = time.monotonic() + within
    books: dict[str, Charged] = {}
    missing = order_ids
    while True:
        books.update(await charged(ledger, missing))
        missing = [order_id for order_id in missing if order_id not in books]
        if not missing or time.monotonic() >= give_up:
            return books
        await asyncio.sleep(1.0)


async def _quiet(meter: CpuMeter, within: float, below: float = 0.1) -> float:
    """Wait until the services and their databases use less than ``below`` of a core
    together (up to ``within`` s); what they use then, in cores.

    The broker and PostgreSQL's background processes are left out: on a shared
    machine they also work for others.
    """
    ours = [*SERVICES, *(f"postgres {s}" for s in SERVICES)]
    give_up = time.monotonic() + within
    while True:
        before = meter.snapshot()
        await asyncio.sleep(1.0)
        usage = meter.usage_since(before)
        busy = sum(usage.cpu.get(name, 0.0) for name in ours) / usage.seconds
        if busy < below or time.monotonic() > give_up:
            print(f"  the services at rest use {busy:.2f} cores", flush=True)
            return busy


async def _measure_floor(
    run: report.Run, stack: Stack, session: aiohttp.ClientSession, orders_worth: int
) -> None:
    print(f"the floor per order: its raw parts, closed loop, {orders_worth} orders' worth each")
    meter = stack.meter({floor.BARE: stack.pids["bare"]}, ["bare"])
    topics = [stack.prefix + t.name for t in (orders.TOPIC, fulfillments.TOPIC)]
    published = await limits.published(stack.kafka, topics)
    by_contract = {
        topic.removeprefix(stack.prefix): records for topic, records in published.items()
    }
    run.events_per_order = floor.events_per_order(by_contract)
    ledger = await asyncpg.connect(stack.dsns["settlement"])
    try:
        entries, postings = await floor.ledger_per_order(ledger)
    finally:
        await ledger.close()
    rows = floor.order_rows(by_contract, entries, postings)
    print(
        f"  an order here: {rows.events:.1f} events of {rows.payload} B on average,"
        f" {rows.entries:.1f} journal entries, {rows.postings:.1f} postings",
        flush=True,
    )
    http = await floor.http_floor(meter, session, stack.bare_url, PLACEMENT_BODY, orders_worth)
    print(http.line(), flush=True)
    pool = await db.create_pool(stack.dsns["bare"], min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        database = await floor.database_floor(meter, pool, rows, orders_worth, POOL_SIZE)
    finally:
        await pool.close()
    for part in database:
        print(part.line(), flush=True)
    events, run.kafka = await floor.kafka_floor(meter, stack.kafka, by_contract, orders_worth)
    print(events.line(), flush=True)
    print(
        f"  aiokafka: {run.kafka.events:,} events produced at {run.kafka.produce_per_s:,.0f}/s,"
        f" read at {run.kafka.consume_per_s:,.0f}/s",
        flush=True,
    )
    run.floor = floor.Floor([http, *database, events], run.kafka)
    total = run.floor.ms_per_order()
    print(f"  floor {total:.2f} ms/order: {ceiling(run.cores, total):,.0f} orders/s on "
          f"{run.cores} cores", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="10,25,50,100,200,400,800")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--kafka", default=os.environ.get("TEST_KAFKA_BOOTSTRAP"))
    parser.add_argument("--postgres-dsn", default=os.environ.get("TEST_PG_DSN"))
    parser.add_argument("--profile", choices=SERVICES, help="py-spy this service under load")
    parser.add_argument("--profile-at", type=float, default=25.0, help="from this offered rate")
    parser.add_argument("--profile-seconds", type=int, default=20)
    parser.add_argument(
        "--floor-orders", type=int, default=1000, help="orders' worth of each raw part"
    )
    parser.add_argument(
        "--settle-seconds", type=float, default=45.0, help="wait for the backlog before the floor"
    )
    parser.add_argument(
        "--floor-only", action="store_true", help="one short step, then the floor; no report"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.floor_only:
        # Enough orders to count what one writes and publishes; the floor is the point.
        args.rates, args.seconds, args.profile = "10", 2.0, None
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as folder:
        state = Path(folder)
        try:
            with (
                infrastructure(args.kafka, args.postgres_dsn) as (kafka, admin_dsn),
                running_stack(state, kafka, admin_dsn) as stack,
            ):
                run = runtime.run(run_steps(args, stack, state))
        finally:
            infra.remove_state(state)
    if args.floor_only:
        return
    (args.out / "pipeline.md").write_text(report.markdown(run))
    report.plot(run, args.out / "pipeline.png")
    print(f"\nwrote {args.out / 'pipeline.md'} and {args.out / 'pipeline.png'}")


if __name__ == "__main__":
    main()
