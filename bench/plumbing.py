"""The plumbing's throughput beside the raw limits, in one run: ``make bench-plumbing``.

    uv run python -m bench.plumbing

Uses the Kafka and PostgreSQL named by ``TEST_KAFKA_BOOTSTRAP`` and
``TEST_PG_DSN`` (an admin DSN: the bench makes and drops its own database and
topics there) when both are set; otherwise starts a throwaway broker and a
durable PostgreSQL of its own, removed afterwards.

Every bench module here exposes ``async def measure(kafka_bootstrap,
admin_dsn) -> list[(name, events_per_s, limit_name)]``; this prints each
figure with its ratio to the figure named as its limit.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from deploy.local import infra

Figure = tuple[str, float, str]
Measure = Callable[[str, str], Awaitable[list[Figure]]]

# Run in this order; a module not there yet (another branch brings it) is skipped.
MODULES = ("bench.consumer_throughput", "bench.outbox_throughput")


@contextmanager
def servers() -> Iterator[tuple[str, str]]:
    bootstrap, admin_dsn = os.environ.get("TEST_KAFKA_BOOTSTRAP"), os.environ.get("TEST_PG_DSN")
    if bootstrap and admin_dsn:
        yield bootstrap, admin_dsn
        return
    with tempfile.TemporaryDirectory(prefix="bench-plumbing-") as folder:
        state = Path(folder)
        try:
            kafka = infra.start_kafka(state, infra.free_port(), infra.free_port(), heap_mb=512)
            postgres = infra.start_postgres(
                state, infra.free_port(), durable=True, databases=["postgres"]
            )
            yield kafka.bootstrap, postgres.dsn("postgres")
        finally:
            infra.stop_kafka(state)
            infra.stop_postgres(state)
            infra.remove_state(state)


def table(figures: list[Figure]) -> str:
    rates = {name: rate for name, rate, _ in figures}
    lines = [f"{'figure':<40} {'events/s':>10}  {'x limit':>7}  limit"]
    for name, rate, limit in figures:
        ratio = rate / rates[limit] if rates.get(limit) else float("nan")
        lines.append(f"{name:<40} {rate:>10,.0f}  {ratio:>7.2f}  {limit}")
    return "\n".join(lines)


async def measure_all(bootstrap: str, admin_dsn: str) -> list[Figure]:
    figures: list[Figure] = []
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as missing:
            if missing.name != module_name:
                raise
            print(f"({module_name} is not there: skipped)")
            continue
        measure: Measure = module.measure
        figures += await measure(bootstrap, admin_dsn)
    return figures


def main() -> None:
    with servers() as (bootstrap, admin_dsn):
        figures = asyncio.run(measure_all(bootstrap, admin_dsn))
    print(f"\n{os.cpu_count()} cores, shared by the bench and the servers")
    print(table(figures))


if __name__ == "__main__":
    main()
