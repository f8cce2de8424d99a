"""The three services as real, separate processes: one stack per test, on shared infra.

Each stack gets its own databases on the test PostgreSQL, its own topic prefix on
the test Kafka (so stacks never meet) and free ports.  A service is started with
the command a user runs (``python -m services.<name>``) and can be killed with
SIGKILL, paused with SIGSTOP, resumed and restarted; a second instance of a
service (same database, same consumer groups) joins with ``add_replica``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError

from deploy.local.infra import free_port
from tests.support.infra import Infra, create_database, drop_database, unique_name
from tests.support.kafka import group_caught_up
from tests.support.keys import TokenKeys
from tests.support.processes import Processes, PythonProcess
from tests.support.waiting import wait_for

SERVICES = ("catalog", "orders", "settlement")
# Killing a service is part of these tests: it must be back within this, even on a
# machine that CI and benchmarks share (a start takes seconds when idle).
READY_TIMEOUT = 120.0
# Consumer groups as the services name them; the topic prefix namespaces them too,
# so stacks on one broker never share a group.
SETTLEMENT_GROUP = "settlement-ledger"
ORDERS_CATALOG_GROUP = "orders.catalog-copy"


@dataclass
class ServiceProcess:
    """One running instance of a service, restartable with the same settings."""

    name: str
    label: str
    env: dict[str, str]
    port: int
    processes: Processes
    process: PythonProcess | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> PythonProcess:
        assert self.process is not None, f"{self.label} was never started"
        return self.process

    def start(self) -> None:
        self.process = self.processes.start(f"services.{self.name}", env=self.env, name=self.label)

    def log(self, last_lines: int = 80) -> str:
        return self.process.log(last_lines) if self.process else "(not started)"

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:  # noqa: ASYNC109
        process = self.running
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                assert process.alive(), f"{self.label} exited early:\n{process.log()}"
                async with session.get(
                    f"{self.base_url}/readyz", timeout=aiohttp.ClientTimeout(total=3)
                ) as response:
                    return response.status == 200

            try:
                await wait_for(
                    ready,
                    timeout=timeout,
                    interval=0.1,
                    ignore=(aiohttp.ClientError, asyncio.TimeoutError),
                    message=f"{self.label} did not become ready",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{process.log()}") from None

    async def kill(self) -> None:
        """SIGKILL: nothing is finished, committed or cleaned up."""
        process = self.running
        if process.alive():
            # A stopped process dies of SIGKILL too, but say so plainly.
            process.popen.send_signal(signal.SIGCONT)
        await process.kill()

    async def restart(self) -> None:
        """Kill (if still running), start again with the same settings, wait until ready."""
        if self.process is not None and self.process.alive():
            await self.kill()
        self.start()
        await self.wait_ready()

    def pause(self) -> None:
        """SIGSTOP: the process is frozen: no heartbeats, no requests answered."""
        self.running.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.running.popen.send_signal(signal.SIGCONT)

    async def terminate(self) -> int:
        process = self.running
        if process.alive():
            process.popen.send_signal(signal.SIGCONT)
        return await process.terminate()


@dataclass
class OwnServer:
    """A server of this test's own (not the shared infra), so the test may stop it."""

    stop: Callable[[], object]
    start: Callable[[], object]

    async def down_for(self, seconds: float) -> None:
        await asyncio.to_thread(self.stop)
        await asyncio.sleep(seconds)  # the outage itself, not a wait for a condition
        await asyncio.to_thread(self.start)


@dataclass
class Stack:
    infra: Infra
    keys: TokenKeys
    prefix: str
    databases: dict[str, str]
    services: dict[str, ServiceProcess]
    processes: Processes
    replicas: list[ServiceProcess] = field(default_factory=list)

    @property
    def catalog(self) -> ServiceProcess:
        return self.services["catalog"]

    @property
    def orders(self) -> ServiceProcess:
        return self.services["orders"]

    @property
    def settlement(self) -> ServiceProcess:
        return self.services["settlement"]

    @property
    def operator_token(self) -> str:
        return self.keys.operator_token

    @property
    def settlement_group(self) -> str:
        return self.prefix + SETTLEMENT_GROUP

    @property
    def orders_catalog_group(self) -> str:
        return self.prefix + ORDERS_CATALOG_GROUP

    def topic(self, name: str) -> str:
        return self.prefix + name

    async def add_replica(self, name: str) -> ServiceProcess:
        """A second instance of ``name``: same database and groups, its own port; ready."""
        first = self.services[name]
        port = free_port()
        env = {**first.env, f"{name.upper()}_HTTP_PORT": str(port)}
        replica = ServiceProcess(
            name, f"{name}-{len(self.replicas) + 2}", env, port, self.processes
        )
        replica.start()
        self.replicas.append(replica)
        await replica.wait_ready()
        return replica

    def logs(self) -> str:
        """The tail of every instance's log, for a failure message."""
        instances = [*self.services.values(), *self.replicas]
        return "\n".join(f"--- {s.label}\n{s.log(40)}" for s in instances)

    async def unsent_outbox_rows(self, name: str) -> int:
        """Events a service committed that its relay has not yet had Kafka acknowledge."""
        conn = await asyncpg.connect(self.databases[name])
        try:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            )
        finally:
            await conn.close()
        return count

    async def settled(self) -> bool:
        """Orders has published everything it committed and settlement has applied all of it."""
        if await self.unsent_outbox_rows("orders"):
            return False
        return await group_caught_up(
            self.infra.kafka_bootstrap, self.settlement_group, self.topic("orders.orders")
        )

    async def wait_settled(self, timeout: float = 60) -> None:  # noqa: ASYNC109
        try:
            await wait_for(
                self.settled,
                timeout=timeout,
                interval=0.25,
                message="orders' outbox did not drain or settlement did not catch up",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None


@dataclass(frozen=True)
class GroupState:
    """A consumer group as the broker describes it: its state and who holds which partitions."""

    state: str  # "Stable", "PreparingRebalance", "CompletingRebalance", "Empty", "Dead"
    members: dict[str, list[int]]  # member id -> partitions (of all its topics) assigned

    def stable_with(self, count: int) -> bool:
        """Settled on ``count`` members, each holding at least one partition."""
        if count == 0:
            return self.state == "Empty"
        members = self.members.values()
        return self.state == "Stable" and len(self.members) == count and all(members)


async def describe_group(bootstrap: str, group: str) -> GroupState:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    for response in responses:
        for described in response.to_object()["groups"]:
            if described["group"] != group:
                continue
            members: dict[str, list[int]] = {}
            for member in described["members"]:
                raw: Any = member["member_assignment"]
                partitions: list[int] = []
                if raw:
                    assignment = ConsumerProtocolMemberAssignment.decode(raw)
                    partitions = sorted(tp.partition for tp in assignment.partitions())
                members[member["member_id"]] = partitions
            return GroupState(described["state"], members)
    return GroupState("Dead", {})


def _service_env(
    name: str, infra: Infra, keys: TokenKeys, prefix: str, dsn: str, port: int
) -> dict[str, str]:
    upper = name.upper()
    return {
        f"{upper}_DATABASE_URL": dsn,
        f"{upper}_HTTP_PORT": str(port),
        "MARKETPLACE_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "MARKETPLACE_TOPIC_PREFIX": prefix,
        "MARKETPLACE_OPERATOR_TOKEN": keys.operator_token,
        "MARKETPLACE_TOKEN_PUBLIC_KEY_FILE": str(keys.public_key_file),
        "MARKETPLACE_STARTUP_TIMEOUT_SECONDS": "30",
        # Killed and restarted processes must not wait long on a clean stop either.
        "MARKETPLACE_SHUTDOWN_TIMEOUT_SECONDS": "5",
    }


def _stack_settings(stack: Stack, acceptance_deadline_seconds: float) -> dict[str, str]:
    """What a test stack sets beyond the defaults (variables a service lacks are ignored)."""
    return {
        # Only the catalog signs tokens; the others never see the private key.
        "CATALOG_TOKEN_SIGNING_KEY_FILE": str(stack.keys.private_key_file),
        # Short enough that a test can wait for an unanswered order to be cancelled.
        "ORDERS_ACCEPTANCE_DEADLINE_SECONDS": str(acceptance_deadline_seconds),
        "ORDERS_TIMER_POLL_SECONDS": "0.25",
        # Load and fault tests drive one partner's token far past a tenant's fair share.
        "MARKETPLACE_PRINCIPAL_RATE_LIMIT_PER_MINUTE": "600000",
        "MARKETPLACE_PRINCIPAL_RATE_LIMIT_BURST": "100000",
    }


@contextlib.asynccontextmanager
async def running_stack(
    infra: Infra,
    keys: TokenKeys,
    processes: Processes,
    *,
    acceptance_deadline_seconds: float = 3600,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Stack]:
    """Catalog, orders and settlement started and ready; everything removed afterwards."""
    prefix = unique_name("stk", max_label=3) + "."
    databases: dict[str, str] = {}
    services: dict[str, ServiceProcess] = {}
    stack = Stack(infra, keys, prefix, databases, services, processes)
    try:
        for name in SERVICES:
            databases[name] = await create_database(infra, f"e2e_{name}")
            port = free_port()
            env = _service_env(name, infra, keys, prefix, databases[name], port)
            env.update(_stack_settings(stack, acceptance_deadline_seconds))
            env.update(extra_env or {})
            services[name] = ServiceProcess(name, name, env, port, processes)
            services[name].start()
        await asyncio.gather(*(service.wait_ready() for service in services.values()))
        yield stack
    finally:
        for instance in [*stack.replicas, *services.values()]:
            if instance.process is not None and instance.process.alive():
                with contextlib.suppress(AssertionError):
                    await instance.kill()
        for dsn in databases.values():
            await drop_database(infra, dsn)
        # Tidying only: a broker that is down (a failed fault test) must not hide the failure.
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            await _delete_topics(infra.kafka_bootstrap, prefix)


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    """Remove the stack's topics: a broker's every metadata request grows with its topics."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        ours = [topic for topic in await admin.list_topics() if topic.startswith(prefix)]
        if ours:
            await admin.delete_topics(ours)
    finally:
        await admin.close()
