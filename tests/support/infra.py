"""Where the tests get Kafka and PostgreSQL from, and throwaway databases on it.

Order (see ``provide_infra``):

1. ``TEST_KAFKA_BOOTSTRAP`` and ``TEST_PG_DSN`` (DSN of an admin database) if both are set;
2. testcontainers when a Docker engine answers;
3. otherwise, or whenever ``TEST_INFRA=local``, the local infrastructure of
   ``deploy.local.infra`` in a fresh temporary state dir, on free ports,
   non-durable, stopped (and its files removed) when the session ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

REPO_ROOT = Path(__file__).resolve().parents[2]

_UNSAFE = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class Infra:
    """A Kafka broker and a PostgreSQL server (reached as a superuser)."""

    kafka_bootstrap: str
    admin_dsn: str
    source: str  # "environment", "testcontainers" or "local"

    def pg_dsn(self, database: str) -> str:
        """The DSN of ``database`` on the same server, as the same (super)user."""
        parts = urlsplit(self.admin_dsn)
        return urlunsplit(parts._replace(path=f"/{database}"))


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def _containers() -> Iterator[Infra]:
    try:
        from testcontainers.community.kafka import KafkaContainer
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before 4.10 kept the modules at the top level
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

    postgres = PostgresContainer(
        "postgres:15", username="postgres", password="postgres", dbname="postgres", driver=None
    )
    kafka = KafkaContainer("confluentinc/cp-kafka:7.7.1").with_kraft()
    with postgres, kafka:
        yield Infra(
            kafka_bootstrap=kafka.get_bootstrap_server(),
            admin_dsn=postgres.get_connection_url(),
            source="testcontainers",
        )


def _remove_state(state_dir: Path) -> None:
    # The cluster may live outside state_dir (see deploy.local.infra._prepare_pg_root).
    relocated = state_dir / "postgres" / "relocated-to"
    with contextlib.suppress(OSError):
        target = Path(relocated.read_text().strip())
        if target.name.startswith("pm-pg-"):
            shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(state_dir, ignore_errors=True)


@contextlib.contextmanager
def local_state_dir() -> Iterator[Path]:
    """A fresh state dir for ``deploy.local.infra`` servers, removed (with all data) after.

    Stop the servers started in it before the block ends.
    """
    state_dir = Path(tempfile.mkdtemp(prefix="pm-tests-"))
    # PostgreSQL runs as the postgres user when we are root: let it reach the folder
    # (pytest's tmp_path is private to root, which would make infra relocate the cluster).
    state_dir.chmod(0o755)
    try:
        yield state_dir
    finally:
        _remove_state(state_dir)


@contextlib.contextmanager
def _local() -> Iterator[Infra]:
    from deploy.local import infra as local

    with contextlib.ExitStack() as stack:
        state_dir = stack.enter_context(local_state_dir())
        # Registered before starting, so a half-finished start is stopped as well.
        stack.callback(local.stop_postgres, state_dir, 30.0)
        postgres = local.start_postgres(
            state_dir, local.free_port(), durable=False, databases=["postgres"]
        )
        stack.callback(local.stop_kafka, state_dir, 30.0)
        kafka = local.start_kafka(state_dir, local.free_port(), local.free_port(), heap_mb=512)
        yield Infra(
            kafka_bootstrap=kafka.bootstrap, admin_dsn=postgres.dsn("postgres"), source="local"
        )


@contextlib.contextmanager
def provide_infra() -> Iterator[Infra]:
    forced_local = os.environ.get("TEST_INFRA") == "local"
    bootstrap = os.environ.get("TEST_KAFKA_BOOTSTRAP")
    admin_dsn = os.environ.get("TEST_PG_DSN")
    if bootstrap and admin_dsn and not forced_local:
        yield Infra(kafka_bootstrap=bootstrap, admin_dsn=admin_dsn, source="environment")
    elif not forced_local and _docker_answers():
        with _containers() as infra:
            yield infra
    else:
        with _local() as infra:
            yield infra


# --------------------------------------------------------------------------- databases


def unique_name(label: str = "t", max_label: int = 30) -> str:
    """A fresh lower-case identifier, usable as a database or topic name."""
    cleaned = _UNSAFE.sub("_", label.lower()).strip("_")[:max_label] or "t"
    return f"{cleaned}_{uuid.uuid4().hex[:10]}"


async def create_database(infra: Infra, label: str = "t") -> str:
    """Create a uniquely named, empty database; return its DSN."""
    name = unique_name(label)
    admin = await asyncpg.connect(infra.admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return infra.pg_dsn(name)


async def drop_database(infra: Infra, dsn: str) -> None:
    """Drop the database of ``dsn``, disconnecting whoever still uses it."""
    name = urlsplit(dsn).path.lstrip("/")
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise ValueError(f"refusing to drop {name!r}: not a database this harness made")
    admin = await asyncpg.connect(infra.admin_dsn)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def temporary_database(infra: Infra, label: str = "t") -> AsyncIterator[str]:
    """A fresh database's DSN for the duration of the block."""
    dsn = await create_database(infra, label)
    try:
        yield dsn
    finally:
        await drop_database(infra, dsn)
