"""Browse/search throughput and p99 of the catalog with 10,000 published offerings.

    uv run python -m bench.catalog_browse [--offerings 10000] [--seconds 5] [--concurrency 16]

Starts its own throwaway Kafka and PostgreSQL (local processes), the catalog
service as a real process and, as the raw limit, a bare aiohttp handler in a
process of its own; drives each with the same closed-loop client and prints
the catalog's numbers beside the bare handler's and their ratio.  The client
shares the machine's cores with the server, so absolute numbers are a floor.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.load import Result, run_load
from bench.processes import RATE_LIMITS_LIFTED, wait_ready
from deploy.local import infra
from services.catalog import handlers
from services.catalog.domain import ComponentDraft, OfferingContent, Partner
from shared import runtime
from shared.contracts.catalog_accounts import PartnerKind
from shared.contracts.pricing import OneTimePricing, SubscriptionPricing, UsagePricing
from shared.tokens import Principal, TokenIssuer, generate_keypair

ROOT = Path(__file__).resolve().parent.parent
KINDS: tuple[PartnerKind, ...] = ("isv", "managed_service", "integrator", "reseller")
WORDS = (
    "database", "analytics", "security", "backup", "monitoring", "kubernetes", "streaming",
    "search", "observability", "identity", "storage", "networking", "compliance", "migration",
    "warehouse", "ingestion", "governance", "cache", "messaging", "gateway", "firewall",
)  # fmt: skip


async def seed(dsn: str, issuer: TokenIssuer, count: int) -> list[Partner]:
    """Onboards partners and publishes ``count`` offerings through the catalog's handlers."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    partners: list[Partner] = []
    async with pool.acquire() as conn, conn.transaction():
        for index in range(40):
            partner, _ = await handlers.register_partner(
                conn, issuer, name=f"Partner {index}", kind=KINDS[index % 4], now=now
            )
            partners.append(partner)
    pricings = (
        OneTimePricing(unit_amount=250_00),
        SubscriptionPricing(unit_amount=99_00, interval="month"),
        UsagePricing(unit_amount=12, unit="GB-hour"),
    )
    for start in range(0, count, 500):
        async with pool.acquire() as conn, conn.transaction():
            for index in range(start, min(count, start + 500)):
                owner = partners[index % len(partners)]
                words = rng.sample(WORDS, 6)
                content = OfferingContent(
                    name=f"{words[0].title()} {words[1]} {index}",
                    description=" ".join(words[2:]) + " for teams of every size",
                    currency="USD",
                    components=(
                        ComponentDraft(owner.id, owner.kind, "Service", rng.choice(pricings)),
                    ),
                )
                offering = await handlers.create_offering(conn, owner.id, content, now)
                owner_principal = Principal(owner.id, "partner", 1)
                await handlers.publish_offering(conn, owner_principal, offering.id, now)
    # A long-running database has planner statistics; a just-seeded one gets them now,
    # rather than whenever autovacuum comes by in the middle of a measurement.
    await pool.execute("ANALYZE")
    await pool.close()
    return partners


def _row(result: Result, bare: Result) -> str:
    p50, p99 = result.percentile(0.5) * 1000, result.percentile(0.99) * 1000
    return (
        f"{result.name:<28} {result.per_second:>9.0f} {p50:>8.2f} {p99:>8.2f} {result.errors:>6}"
        f" {result.per_second / bare.per_second:>9.2f} {p99 / (bare.percentile(0.99) * 1000):>9.1f}"
    )


@dataclass
class Stack:
    catalog_port: int
    bare_port: int
    dsn: str
    issuer: TokenIssuer
    operator_token: str


@contextmanager
def running_stack(state: Path) -> Iterator[Stack]:
    """Kafka, PostgreSQL, the catalog and the bare handler, each a process of its own."""
    kafka = infra.start_kafka(state, infra.free_port(), infra.free_port(), heap_mb=384)
    postgres = infra.start_postgres(state, infra.free_port(), durable=False, databases=["catalog"])
    private_pem, public_pem = generate_keypair()
    (state / "signing.pem").write_bytes(private_pem)
    (state / "public.pem").write_bytes(public_pem)
    catalog_port, bare_port = infra.free_port(), infra.free_port()
    operator_token = secrets.token_urlsafe(24)
    env = dict(
        os.environ,
        CATALOG_DATABASE_URL=postgres.dsn("catalog"),
        CATALOG_HTTP_PORT=str(catalog_port),
        MARKETPLACE_KAFKA_BOOTSTRAP=kafka.bootstrap,
        MARKETPLACE_OPERATOR_TOKEN=operator_token,
        MARKETPLACE_TOKEN_PUBLIC_KEY_FILE=str(state / "public.pem"),
        CATALOG_TOKEN_SIGNING_KEY_FILE=str(state / "signing.pem"),
        MARKETPLACE_LOG_LEVEL="WARNING",
        **RATE_LIMITS_LIFTED,
    )
    log = (state / "catalog.log").open("wb")
    servers = [
        subprocess.Popen([sys.executable, "-m", "services.catalog"], cwd=ROOT, env=env,
                         stdout=log, stderr=log),
        subprocess.Popen([sys.executable, "-m", "bench.bare_server", str(bare_port)], cwd=ROOT),
    ]  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{catalog_port}/readyz")
        wait_ready(f"http://127.0.0.1:{bare_port}/bare")
        yield Stack(
            catalog_port, bare_port, postgres.dsn("catalog"),
            TokenIssuer(private_pem, ttl=timedelta(hours=1)), operator_token,
        )  # fmt: skip
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
        kafka.stop()
        postgres.stop()


async def measure(args: argparse.Namespace, stack: Stack) -> None:
    started = time.perf_counter()
    partners = await seed(stack.dsn, stack.issuer, args.offerings)
    print(f"seeded {args.offerings} published offerings in {time.perf_counter() - started:.1f}s")
    token = stack.issuer.issue(partners[0].id, "partner", 1)
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{stack.catalog_port}/v1/offerings"
    bare_url = f"http://127.0.0.1:{stack.bare_port}/bare"
    common = {"headers": headers, "concurrency": args.concurrency, "seconds": args.seconds}
    bare = await run_load("bare aiohttp handler", lambda _: bare_url, **common)
    scenarios = [
        ("browse newest (limit 50)", lambda _: base),
        ("browse limit 10", lambda _: f"{base}?limit=10"),
        ("search q=<word>", lambda i: f"{base}?q={WORDS[i % len(WORDS)]}&limit=20"),
        ("filter kind", lambda i: f"{base}?kind={KINDS[i % 4]}&limit=20"),
        ("filter partner_id", lambda i: f"{base}?partner_id={partners[i % 40].id}&limit=20"),
    ]
    results = [await run_load(name, url_of, **common) for name, url_of in scenarios]
    # The operator's token needs no token-generation lookup: the difference is that lookup.
    as_operator = {**common, "headers": {"Authorization": f"Bearer {stack.operator_token}"}}
    results.append(
        await run_load("browse limit 10, operator", lambda _: f"{base}?limit=10", **as_operator)
    )
    print(
        f"\n{args.offerings} offerings, {args.concurrency} concurrent clients, "
        f"{args.seconds:.0f}s per scenario, {os.cpu_count()} cores shared by client and server"
    )
    print(f"{'scenario':<28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
          f"{'x bare/s':>9} {'x bare p99':>9}")  # fmt: skip
    for result in [bare, *results]:
        print(_row(result, bare))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offerings", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        state = Path(folder)
        try:
            with running_stack(state) as stack:
                runtime.run(measure(args, stack))
        finally:
            infra.remove_state(state)


if __name__ == "__main__":
    main()
