"""Partners' answers: answers/s and CPU per answer of the orders service and its PostgreSQL.

    uv run python -m bench.orders_answer [--before DIR] [--orders 150] [--rounds 3]
                                         [--in-flight 8]

Starts the orders service of this tree as a real process (``python -m
services.orders``) on a database of its own, and with ``--before DIR`` a
second one from another checkout of the repository (``git archive REV | tar
-x -C DIR``) on another database, both over the Kafka and PostgreSQL of
``TEST_KAFKA_BOOTSTRAP`` and ``TEST_PG_DSN``.  Each round places
``--orders`` orders of a three-partner offering on each service, then
answers them as the pipeline's partners do: the three partners of an order
accept at the same moment, then all three complete at the same moment,
``--in-flight`` orders at a time.  The services take turns round by round,
so the machine's other work (it is shared) falls on both alike.

Per answer it reports the CPU time of the service's process and of its
PostgreSQL backends (``/proc/<pid>/stat``; the backends are the processes
titled ``postgres: postgres <database>``), the statements PostgreSQL ran for
the service's database (``pg_stat_statements``, filtered by the database, so
nobody else's counts are reset), and the answers' latency.  Everything the
service does meanwhile counts (its outbox relay publishing the answers'
events, its timer loop), as it would in production.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import asyncpg
import msgspec

from bench.orders_place import OFFERING_ID, _create_database, _drop_database, offering_published
from bench.pipeline_cpu import backends_cpu, cpu_seconds_of
from bench.processes import POOL_SIZE, RATE_LIMITS_LIFTED, stop, wait_ready
from deploy.local.infra import free_port
from services.orders import handlers
from shared.tokens import TokenIssuer, generate_keypair

ROOT = Path(__file__).resolve().parent.parent
PARTNERS = ("prt_isv", "prt_msp", "prt_si")


@dataclass
class Service:
    label: str
    tree: Path
    database: str
    dsn: str
    port: int
    process: subprocess.Popen[bytes] | None = None


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process; 0 for one that is gone."""
    return cpu_seconds_of(pid) or 0.0


async def statements(admin: asyncpg.Connection[asyncpg.Record], database: str) -> dict[str, int]:
    rows = await admin.fetch(
        "SELECT query, sum(calls)::bigint AS calls FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = $1) GROUP BY query",
        database,
    )
    return {row["query"]: row["calls"] for row in rows}


@dataclass
class Round:
    answers: int
    seconds: float
    service_cpu: float
    postgres_cpu: float
    statements: dict[str, int]
    latencies: list[float]
    refused: int


async def place_orders(
    session: aiohttp.ClientSession, service: Service, customer: str, count: int
) -> list[dict[str, str]]:
    """``count`` orders; for each, partner id → its fulfilment id."""
    body = msgspec.json.encode({"lines": [{"offering_id": OFFERING_ID, "quantity": 1}]})
    headers = {"Authorization": f"Bearer {customer}", "Content-Type": "application/json"}
    url = f"http://127.0.0.1:{service.port}/v1/orders"

    async def one() -> dict[str, str]:
        async with session.post(url, data=body, headers=headers) as response:
            order = await response.json()
            assert response.status == 201, order
        return {f["partner_id"]: f["id"] for f in order["fulfillments"]}

    placed: list[dict[str, str]] = []
    for start in range(0, count, 20):
        placed += await asyncio.gather(*(one() for _ in range(min(20, count - start))))
    return placed


async def answer_all(
    session: aiohttp.ClientSession,
    service: Service,
    partners: dict[str, str],
    orders: list[dict[str, str]],
    in_flight: int,
) -> tuple[list[float], int]:
    """Each order's three accepts at once, then its three completes at once."""
    latencies: list[float] = []
    refused = 0
    base = f"http://127.0.0.1:{service.port}/v1/fulfillments"
    queue = list(orders)

    async def answer(partner_id: str, fulfillment_id: str, verb: str) -> None:
        nonlocal refused
        started = time.perf_counter()
        headers = {"Authorization": f"Bearer {partners[partner_id]}"}
        async with session.post(f"{base}/{fulfillment_id}/{verb}", headers=headers) as response:
            await response.read()
            if response.status != 200:
                refused += 1
                if refused == 1:
                    print(f"  {service.label}: {verb} answered {response.status}", flush=True)
        latencies.append(time.perf_counter() - started)

    async def worker() -> None:
        while queue:
            order = queue.pop()
            for verb in ("accept", "complete"):
                await asyncio.gather(*(answer(p, f, verb) for p, f in order.items()))

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return latencies, refused


async def one_round(
    admin: asyncpg.Connection[asyncpg.Record],
    session: aiohttp.ClientSession,
    service: Service,
    tokens: dict[str, str],
    count: int,
    in_flight: int,
) -> Round:
    assert service.process is not None
    orders = await place_orders(session, service, tokens["customer"], count)
    pid = service.process.pid
    service_before, postgres_before = cpu_seconds(pid), backends_cpu(service.database)
    statements_before = await statements(admin, service.database)
    started = time.perf_counter()
    latencies, refused = await answer_all(session, service, tokens, orders, in_flight)
    seconds = time.perf_counter() - started
    service_after, postgres_after = cpu_seconds(pid), backends_cpu(service.database)
    statements_after = await statements(admin, service.database)
    return Round(
        answers=len(latencies),
        seconds=seconds,
        service_cpu=service_after - service_before,
        postgres_cpu=sum(
            cpu - postgres_before.get(backend, 0.0) for backend, cpu in postgres_after.items()
        ),
        statements={
            query: calls - statements_before.get(query, 0)
            for query, calls in statements_after.items()
            if calls > statements_before.get(query, 0)
        },
        latencies=latencies,
        refused=refused,
    )


@contextmanager
def running(services: list[Service], kafka: str, public_key: Path) -> Iterator[None]:
    prefix = f"benchanswer{secrets.token_hex(4)}."
    try:
        for service in services:
            env = dict(
                os.environ,
                ORDERS_DATABASE_URL=service.dsn,
                ORDERS_HTTP_PORT=str(service.port),
                MARKETPLACE_KAFKA_BOOTSTRAP=kafka,
                MARKETPLACE_TOPIC_PREFIX=f"{prefix}{service.label}.",
                MARKETPLACE_OPERATOR_TOKEN=secrets.token_urlsafe(24),
                MARKETPLACE_TOKEN_PUBLIC_KEY_FILE=str(public_key),
                MARKETPLACE_LOG_LEVEL="WARNING",
                MARKETPLACE_DB_POOL_SIZE=str(POOL_SIZE),
                # Every connection open from the start, so no backend comes or goes mid-round.
                MARKETPLACE_DB_POOL_MIN_SIZE=str(POOL_SIZE),
                **RATE_LIMITS_LIFTED,
            )
            log = (public_key.parent / f"{service.label}.log").open("wb")
            service.process = subprocess.Popen(
                [sys.executable, "-m", "services.orders"], cwd=service.tree, env=env,
                stdout=log, stderr=log,
            )  # fmt: skip
        for service in services:
            wait_ready(f"http://127.0.0.1:{service.port}/healthz", timeout=90)
        yield
    finally:
        stop({s.label: s.process for s in services if s.process is not None})


async def seed(service: Service) -> None:
    """The offering in the service's local copy of the catalog, as its consumer would write it."""
    conn = await asyncpg.connect(service.dsn)
    try:
        async with conn.transaction():
            await handlers.apply_catalog_event(conn, offering_published())
    finally:
        await conn.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(label: str, rounds: list[Round]) -> None:
    answers = sum(r.answers for r in rounds)
    seconds = sum(r.seconds for r in rounds)
    latencies = [latency for r in rounds for latency in r.latencies]
    service_ms = sum(r.service_cpu for r in rounds) / answers * 1000
    postgres_ms = sum(r.postgres_cpu for r in rounds) / answers * 1000
    totals: dict[str, int] = {}
    for r in rounds:
        for query, calls in r.statements.items():
            totals[query] = totals.get(query, 0) + calls
    print(
        f"{label:<8} {answers} answers in {seconds:.1f} s: {answers / seconds:.0f}/s,"
        f" p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p99"
        f" {percentile(latencies, 0.99) * 1000:.1f} ms, refused {sum(r.refused for r in rounds)};"
        f" CPU per answer: service {service_ms:.2f} ms, PostgreSQL {postgres_ms:.2f} ms;"
        f" statements per answer {sum(totals.values()) / answers:.2f}",
        flush=True,
    )
    for query, calls in sorted(totals.items(), key=lambda item: -item[1])[:8]:
        print(f"    {calls / answers:5.2f}  {' '.join(query.split())[:110]}")


async def measure(args: argparse.Namespace, state: Path) -> None:
    admin_dsn = args.postgres_dsn
    base = admin_dsn.rsplit("/", 1)[0]
    suffix = secrets.token_hex(4)
    trees = [("after", ROOT)] + ([("before", args.before)] if args.before else [])
    services = [
        Service(label, tree, f"bench_answer_{label}_{suffix}", "", free_port())
        for label, tree in trees
    ]
    for service in services:
        service.dsn = f"{base}/{service.database}"
        await _create_database(admin_dsn, service.database)
    private_pem, public_pem = generate_keypair()
    (state / "public.pem").write_bytes(public_pem)
    issuer = TokenIssuer(private_pem, ttl=timedelta(hours=1))
    tokens = {"customer": issuer.issue(f"cus_bench{suffix}", "customer", 1)}
    tokens |= {partner: issuer.issue(partner, "partner", 1) for partner in PARTNERS}
    admin = await asyncpg.connect(admin_dsn)
    try:
        with running(services, args.kafka, state / "public.pem"):
            for service in services:
                await seed(service)
            results: dict[str, list[Round]] = {s.label: [] for s in services}
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                for service in services:  # warm-up: connections, prepared statements
                    await one_round(admin, session, service, tokens, 20, args.in_flight)
                for number in range(args.rounds):
                    # Alternate who goes first, so a trend in the machine's load is shared.
                    for service in services if number % 2 == 0 else services[::-1]:
                        results[service.label].append(
                            await one_round(
                                admin, session, service, tokens, args.orders, args.in_flight
                            )
                        )
            for label, rounds in results.items():
                report(label, rounds)
    finally:
        await admin.close()
        for service in services:
            await _drop_database(admin_dsn, service.database)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--before", type=lambda path: Path(path).resolve(), help="another checkout to compare with"
    )
    parser.add_argument("--orders", type=int, default=150, help="orders per round and service")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=8, help="orders answered at a time")
    parser.add_argument("--kafka", default=os.environ.get("TEST_KAFKA_BOOTSTRAP"))
    parser.add_argument("--postgres-dsn", default=os.environ.get("TEST_PG_DSN"))
    args = parser.parse_args()
    if not args.kafka or not args.postgres_dsn:
        parser.error("give --kafka and --postgres-dsn (or TEST_KAFKA_BOOTSTRAP and TEST_PG_DSN)")
    with tempfile.TemporaryDirectory(prefix="bench-answer-") as state:
        asyncio.run(measure(args, Path(state)))


if __name__ == "__main__":
    main()
