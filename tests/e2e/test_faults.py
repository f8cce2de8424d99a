"""Crash tests: real processes, real signals, under a steady seeded order load.

One fault per test while customers order and partners answer. Once the
system settles, the same invariants must hold whatever happened:

* every order that got a 201 rests where its parties' answers lead (none pending);
* every partner's balance equals a recomputation from the orders' own data;
* no event counted twice and no payout made twice (both show as inexact balances);
* the trial balance is zero and the three-way check agrees for every order.

Seeds: ``FAULT_SEEDS="1 2 3"`` (spaces or commas) runs each scenario once per
seed; by default each runs with seed 1. A failure names its seed, so
``FAULT_SEEDS=<seed> pytest tests/e2e/test_faults.py -k <scenario>`` replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import aiohttp
import pytest

from tests.e2e.load import Workload, plan_mismatches
from tests.e2e.marketplace import Marketplace, make_deal, offerings_known_to_orders
from tests.e2e.verify import verify_books
from tests.support.infra import Infra
from tests.support.keys import TokenKeys
from tests.support.processes import Processes
from tests.support.stack import OwnServer, Stack, describe_group, running_stack
from tests.support.waiting import wait_for

# Several waits of up to a minute each, on a machine CI and benchmarks share.
pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

SEEDS = [int(s) for s in re.split(r"[\s,]+", os.environ.get("FAULT_SEEDS", "1").strip()) if s]
LOAD_SECONDS = 15.0
ORDERS_PER_SECOND = 4.0
# Short, so orders nobody answers are cancelled within the test, long enough that a
# restarted orders service is back before the deadline of orders it took just before.
ACCEPTANCE_DEADLINE_SECONDS = 8.0
# aiokafka's default session timeout: a member silent this long is dropped from its group.
SESSION_TIMEOUT_SECONDS = 10.0
SETTLE_SECONDS = 60.0

Fault = Callable[[Stack, Marketplace, Workload, random.Random], Awaitable[None]]


@pytest.fixture
async def fault_stack(
    infra: Infra, token_keys: TokenKeys, processes: Processes
) -> AsyncIterator[Stack]:
    async with running_stack(
        infra, token_keys, processes, acceptance_deadline_seconds=ACCEPTANCE_DEADLINE_SECONDS
    ) as started:
        yield started


async def some_orders_placed(workload: Workload, rng: random.Random) -> None:
    """Until a random share of the load is in: the fault strikes mid-stream."""
    wanted = int(LOAD_SECONDS * ORDERS_PER_SECOND * rng.uniform(0.2, 0.5))
    await wait_for(
        lambda: len(workload.placed) >= wanted,
        timeout=LOAD_SECONDS * 2,
        message=f"{wanted} orders were not placed",
    )


async def run_under_load(stack: Stack, seed: int, fault: Fault) -> None:
    print(f"fault seed {seed}: replay with FAULT_SEEDS={seed}")
    async with aiohttp.ClientSession() as session:
        mp = Marketplace(session, stack)
        try:
            await _scenario(stack, mp, seed, fault)
        except AssertionError as exc:
            raise AssertionError(f"[fault seed {seed}] {exc}\n{stack.logs()}") from None


def _phase(started: float, what: str) -> None:
    """A timeline on stdout, shown with a failure: which phase took how long."""
    print(f"{asyncio.get_running_loop().time() - started:6.1f}s {what}")


async def _scenario(stack: Stack, mp: Marketplace, seed: int, fault: Fault) -> None:
    started = asyncio.get_running_loop().time()
    deal = await make_deal(mp)
    probe = await offerings_known_to_orders(mp, deal)
    workload = Workload(mp, deal, seed, rate=ORDERS_PER_SECOND)
    workload.start_partners()
    load = asyncio.create_task(workload.place_orders(LOAD_SECONDS))
    _phase(started, "load started")
    try:
        await fault(stack, mp, workload, random.Random(seed))
        _phase(started, "fault done")
        # A payout run while orders still flow: what it pays must never be paid again.
        await run_payouts(mp)
        await load
        _phase(started, "load placed")
        orders = await workload.wait_until_done(timeout=SETTLE_SECONDS)
        await workload.stop_partners()
        _phase(started, "every order at rest")
    finally:
        load.cancel()
        await workload.abort()
    assert not workload.unexpected, workload.unexpected
    assert probe in orders
    problems = plan_mismatches(workload.placed.values(), orders, workload.outages)
    assert not problems, problems
    await stack.wait_settled(timeout=SETTLE_SECONDS)
    _phase(started, "settlement caught up")
    await run_payouts(mp)
    assert (await run_payouts(mp)) == [], "a second payout run paid again"
    expected, books, problems = await verify_books(mp, deal, orders, workload.usage)
    assert not problems, problems
    statuses = Counter(order["status"] for order in orders.values())
    paid = sum(len(listed) for listed in books.payouts.values())
    print(
        f"fault seed {seed}: {dict(statuses)}, {len(workload.usage)} usage reports,"
        f" {expected.fees} in fees, {paid} payouts"
    )


async def run_payouts(mp: Marketplace) -> list[object]:
    reply = await mp.answered(
        "POST", "settlement", "/v1/payouts/run", token=mp.stack.operator_token,
        json={"as_of": datetime.now(UTC).isoformat()},
    )  # fmt: skip
    payouts: list[object] = reply.expect(201)["payouts"]
    return payouts


@pytest.mark.parametrize("seed", SEEDS)
async def test_orders_killed_and_restarted(fault_stack: Stack, seed: int) -> None:
    async def fault(stack: Stack, _: Marketplace, workload: Workload, rng: random.Random) -> None:
        await some_orders_placed(workload, rng)
        async with workload.outage():
            await stack.orders.kill()
            await asyncio.sleep(rng.uniform(0.0, 2.0))  # down for a while, as after a crash
            await stack.orders.restart()

    await run_under_load(fault_stack, seed, fault)


@pytest.mark.parametrize("seed", SEEDS)
async def test_settlement_killed_and_restarted(fault_stack: Stack, seed: int) -> None:
    async def fault(stack: Stack, _: Marketplace, workload: Workload, rng: random.Random) -> None:
        await some_orders_placed(workload, rng)
        await stack.settlement.kill()
        await asyncio.sleep(rng.uniform(0.0, 2.0))  # down for a while, as after a crash
        await stack.settlement.restart()

    await run_under_load(fault_stack, seed, fault)


@pytest.mark.parametrize("seed", SEEDS)
async def test_orders_killed_while_its_relay_has_events_in_flight(
    fault_stack: Stack, seed: int
) -> None:
    async def fault(stack: Stack, _: Marketplace, workload: Workload, rng: random.Random) -> None:
        await some_orders_placed(workload, rng)
        # Committed but not yet acknowledged by Kafka: the relay is mid-batch.
        await wait_for(
            lambda: stack.unsent_outbox_rows("orders"),
            timeout=LOAD_SECONDS,
            interval=0.005,
            message="the orders relay never had unsent events",
        )
        async with workload.outage():
            await stack.orders.kill()
            await stack.orders.restart()

    await run_under_load(fault_stack, seed, fault)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("paused", ["settlement", "orders"])
async def test_a_service_paused_past_its_session_timeout(
    fault_stack: Stack, paused: str, seed: int
) -> None:
    async def fault(stack: Stack, _: Marketplace, workload: Workload, rng: random.Random) -> None:
        service = stack.services[paused]
        group = stack.settlement_group if paused == "settlement" else stack.orders_catalog_group
        await some_orders_placed(workload, rng)
        async with workload.outage() if paused == "orders" else contextlib.nullcontext():
            service.pause()
            try:
                # Frozen past the session timeout: the broker drops it from its group.
                await wait_for(
                    _group_settled_on(stack, group, 0),
                    timeout=SESSION_TIMEOUT_SECONDS * 3,
                    interval=0.5,
                    message=f"the paused {paused} stayed in {group}",
                )
            finally:
                service.resume()
            await service.wait_ready()

    await run_under_load(fault_stack, seed, fault)


@pytest.mark.parametrize("seed", SEEDS)
async def test_one_of_two_settlement_instances_killed_mid_stream(
    fault_stack: Stack, seed: int
) -> None:
    async def fault(stack: Stack, mp: Marketplace, workload: Workload, rng: random.Random) -> None:
        replica = await stack.add_replica("settlement")
        await wait_for(
            _group_settled_on(stack, stack.settlement_group, 2),
            timeout=SESSION_TIMEOUT_SECONDS * 3,
            interval=0.5,
            message="the second settlement instance never took partitions",
        )
        await some_orders_placed(workload, rng)
        await stack.settlement.kill()
        mp.urls["settlement"] = replica.base_url
        # The survivor takes every partition once the broker gives up on the dead one.
        await wait_for(
            _group_settled_on(stack, stack.settlement_group, 1),
            timeout=SESSION_TIMEOUT_SECONDS * 3,
            interval=0.5,
            message="the surviving settlement instance did not take over",
        )

    await run_under_load(fault_stack, seed, fault)


def _group_settled_on(stack: Stack, group: str, count: int) -> Callable[[], Awaitable[bool]]:
    """Whether ``group`` settled on ``count`` members, each holding partitions."""

    async def check() -> bool:
        state = await describe_group(stack.infra.kafka_bootstrap, group)
        return state.stable_with(count)

    return check


async def _all_ready(stack: Stack) -> None:
    await asyncio.gather(*(service.wait_ready() for service in stack.services.values()))


@pytest.mark.parametrize("seed", SEEDS)
async def test_postgresql_stopped_and_restarted(
    own_postgres: tuple[Infra, OwnServer],
    token_keys: TokenKeys,
    processes: Processes,
    seed: int,
) -> None:
    own_infra, postgres = own_postgres

    async def fault(stack: Stack, _: Marketplace, workload: Workload, rng: random.Random) -> None:
        await some_orders_placed(workload, rng)
        async with workload.outage():
            await postgres.down_for(rng.uniform(0.5, 3.0))
            await _all_ready(stack)

    async with running_stack(
        own_infra, token_keys, processes, acceptance_deadline_seconds=ACCEPTANCE_DEADLINE_SECONDS
    ) as stack:
        await run_under_load(stack, seed, fault)


@pytest.mark.parametrize("seed", SEEDS)
async def test_kafka_stopped_and_restarted(
    own_kafka: tuple[Infra, OwnServer],
    token_keys: TokenKeys,
    processes: Processes,
    seed: int,
) -> None:
    own_infra, kafka = own_kafka

    async def fault(stack: Stack, _: Marketplace, workload: Workload, rng: random.Random) -> None:
        await some_orders_placed(workload, rng)
        await kafka.down_for(rng.uniform(0.5, 3.0))
        await _all_ready(stack)

    async with running_stack(
        own_infra, token_keys, processes, acceptance_deadline_seconds=ACCEPTANCE_DEADLINE_SECONDS
    ) as stack:
        await run_under_load(stack, seed, fault)
