"""The day in order: open the catalog, sell, fulfil, settle, pay out, reconcile, report."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from deploy.demo import plan
from deploy.demo.actors import (
    Cast,
    Customers,
    Operator,
    PartnerDesk,
    Script,
    gather_limited,
    now,
    open_fulfilment_feed,
    rfc3339,
    sign_up_customers,
)
from deploy.demo.bank import bank_statement, read_payouts, read_reconciliation
from deploy.demo.checks import Balance, read_balance, read_three_way, read_trial_balance
from deploy.demo.client import Marketplace, Refused, Service
from deploy.demo.statements import earnings, statement_items
from deploy.demo.summary import DaySummary, FateOutcome, PartnerDay
from shared.contracts import fulfillments

# How long settlement's balances must stay still before the day counts as settled.
QUIET_POLLS = 3
POLL_SECONDS = 0.5
PAGE = {"limit": "500"}  # the contract's largest page


class DemoStopped(Exception):
    """The day cannot go on (a service or Kafka is not there); the message says what to do."""


@dataclass(frozen=True)
class Options:
    urls: dict[Service, str]
    kafka: str
    topic_prefix: str
    operator_token: str
    customers: int
    orders: int
    concurrency: int
    seed: int
    deadline_wait: float
    settle_timeout: float


async def play(options: Options, say: Callable[[str], None]) -> DaySummary:
    started = asyncio.get_running_loop().time()
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=max(20, options.concurrency * 2))
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        client = Marketplace(session, options.urls)
        await _check_services(client)
        topic = options.topic_prefix + fulfillments.TOPIC.name
        try:
            feed = await asyncio.wait_for(open_fulfilment_feed(options.kafka, topic), 20)
        except (TimeoutError, OSError, KafkaError) as exc:
            raise DemoStopped(
                f"Kafka is not reachable at {options.kafka} ({type(exc).__name__}); "
                "start the marketplace with `make run`, or pass --kafka"
            ) from exc
        except LookupError as exc:
            raise DemoStopped(str(exc)) from exc
        try:
            summary = await _day(client, options, feed, say)
        finally:
            await feed.stop()
    summary.day_seconds = asyncio.get_running_loop().time() - started
    return summary


async def _check_services(client: Marketplace) -> None:
    problems = [
        problem
        for problem in await asyncio.gather(
            *(client.ready(service) for service in ("catalog", "orders", "settlement"))
        )
        if problem is not None
    ]
    if problems:
        raise DemoStopped(
            "\n".join(problems) + "\nStart the marketplace first: make run  (then: make demo)"
        )


async def _day(
    client: Marketplace, options: Options, feed: AIOKafkaConsumer, say: Callable[[str], None]
) -> DaySummary:
    since = now() - timedelta(minutes=1)
    the_plan = plan.make_plan(
        seed=options.seed,
        customers=options.customers,
        orders=options.orders,
        run_id=uuid.uuid4().hex[:8],
    )
    operator = Operator(client, options.operator_token, say)
    say("The operator onboards the partners; they agree to co-sell and publish offerings:")
    cast = await operator.open_catalog()
    script = Script()
    desk = PartnerDesk(client, cast, script, feed, deadline_wait=options.deadline_wait)
    reading = asyncio.get_running_loop().create_task(desk.read())
    try:
        say(f"{len(the_plan.customers)} customers sign up.")
        await sign_up_customers(client, the_plan, cast, options.concurrency)
        say(
            f"They place {len(the_plan.orders)} orders, {options.concurrency} at a time; "
            "partners answer from their fulfilment topic:"
        )
        customers = Customers(client, cast, script)
        placing = await customers.place_all(the_plan.orders, options.concurrency)
        summary = DaySummary(
            seed=options.seed,
            customers=len(the_plan.customers),
            planned=len(the_plan.orders),
            placed=len(script.placed_orders()),
            placing_seconds=placing,
            refused=customers.refused,
        )
        say("Partners accept, reject, deliver and report usage; some never answer in time ...")
        await customers.drain()
        await desk.drain()
        statuses = await _settle_orders(client, operator.token, script, desk, options)
        await desk.drain()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
    _record_orders(summary, script, desk, statuses)
    for status, count in customers.cancels_refused.items():
        summary.notes.append(f"{count} customer cancellations were refused with HTTP {status}")
    say("Settlement catches up; the operator runs the payouts and reconciles the bank statement.")
    await _close_the_books(
        client, operator.token, cast, summary, options, order_ids=set(statuses), since=since
    )
    return summary


def _expected(order_id: str, order: plan.PlannedOrder, desk: PartnerDesk) -> str:
    return plan.expected_status(order.fate, deadline_fires=order_id in desk.deadline_orders)


async def _settle_orders(
    client: Marketplace, token: str, script: Script, desk: PartnerDesk, options: Options
) -> dict[str, str]:
    """Poll every placed order until it ends as planned or the wait is over."""
    placed = script.placed_orders()
    statuses: dict[str, str] = {}
    waiting = set(placed)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + options.settle_timeout

    async def status_of(order_id: str) -> tuple[str, str]:
        try:
            body = await client.get("orders", f"/v1/orders/{order_id}", token=token)
        except Refused as refusal:
            return order_id, f"unknown (HTTP {refusal.status})"
        return order_id, str(body.get("status", "unknown"))

    while True:
        polled = await gather_limited(
            options.concurrency, [functools.partial(status_of, o) for o in sorted(waiting)]
        )
        statuses.update(polled)
        waiting = {o for o in waiting if statuses[o] != _expected(o, placed[o], desk)}
        if not waiting or loop.time() > give_up:
            return statuses
        await asyncio.sleep(POLL_SECONDS)


def _record_orders(
    summary: DaySummary,
    script: Script,
    desk: PartnerDesk,
    statuses: dict[str, str],
) -> None:
    placed = script.placed_orders()
    summary.statuses = Counter(statuses.values())
    for fate in plan.FATES:
        of_fate = [o for o, planned in placed.items() if planned.fate == fate]
        if of_fate:
            expected = plan.expected_status(fate, deadline_fires=bool(desk.deadline_orders))
            outcome = Counter(statuses.get(o, "?") for o in of_fate)
            summary.fates.append(FateOutcome(fate, expected, outcome))
    summary.fulfilment_answers = desk.answers
    summary.usage_reports = desk.usage_reports
    summary.deadline_seconds = desk.deadline_seconds
    summary.deadline_waited = bool(desk.deadline_orders)
    for order_id, planned in placed.items():
        if statuses.get(order_id) != _expected(order_id, planned, desk):
            summary.notes.append(
                f"order {order_id} ({planned.fate}) ended {statuses.get(order_id, 'unknown')}, "
                f"expected {_expected(order_id, planned, desk)}"
            )
    if len(summary.notes) > 5:
        hidden = len(summary.notes) - 5
        summary.notes[5:] = [f"... and {hidden} more orders that did not end as planned"]


async def _balances(client: Marketplace, token: str, cast: Cast) -> dict[str, Balance | None]:
    async def balance_of(key: str) -> tuple[str, Balance | None]:
        try:
            body = await client.get(
                "settlement", f"/v1/balances/{cast.partners[key].id}", token=token
            )
        except Refused:
            return key, None
        return key, read_balance(body)

    return dict(await asyncio.gather(*(balance_of(key) for key in cast.partners)))


async def _settlement_quiet(client: Marketplace, token: str, cast: Cast, timeout: float) -> bool:  # noqa: ASYNC109
    """Settlement has caught up once every balance stays unchanged for a few polls.

    Settlement offers no "caught up" signal over HTTP, so stillness stands in for it.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    last: dict[str, Balance | None] | None = None
    still = 0
    while loop.time() < give_up:
        current = await _balances(client, token, cast)
        still = still + 1 if current == last else 0
        if still >= QUIET_POLLS and any(current.values()):
            return True
        last = current
        await asyncio.sleep(POLL_SECONDS)
    return False


async def _close_the_books(
    client: Marketplace,
    token: str,
    cast: Cast,
    summary: DaySummary,
    options: Options,
    *,
    order_ids: set[str],
    since: datetime,
) -> None:
    if not await _settlement_quiet(client, token, cast, options.settle_timeout):
        summary.notes.append(
            f"settlement's balances were still moving after {options.settle_timeout:g} s; "
            "the payout run may miss the last fulfilled orders"
        )
    try:
        run = await client.create(
            "settlement", "/v1/payouts/run", token=token, body={"as_of": rfc3339(now())}
        )
        summary.payouts = read_payouts(run)
        summary.bank = bank_statement(summary.payouts, booked_at=rfc3339(now()), seed=options.seed)
        if summary.bank.lines or summary.payouts:
            result = await client.create(
                "settlement", "/v1/reconciliations", token=token, body={"lines": summary.bank.lines}
            )
            summary.reconciliation = read_reconciliation(result)
    except Refused as refusal:
        summary.notes.append(f"payouts: {refusal}")
    balances = await _balances(client, token, cast)
    paid_out = Counter[str]()
    for payout in summary.payouts:
        paid_out[payout.partner_id] += payout.amount
    for key, account in cast.partners.items():
        spec = plan.partner(key)
        try:
            pages = await client.pages(
                "settlement", f"/v1/statements/{account.id}", token=token, params=PAGE
            )
            lines = [line for page in pages for line in statement_items(page)]
            earned = earnings(account.id, lines)
        except Refused as refusal:
            summary.notes.append(f"statement of {spec.name}: {refusal}")
            earned = None
        summary.partners.append(
            PartnerDay(spec.name, spec.kind, earned, balances.get(key), paid_out[account.id])
        )
    try:
        period = {"from": rfc3339(since), "to": rfc3339(now()), **PAGE}
        pages = await client.pages("settlement", "/v1/checks/three-way", token=token, params=period)
        summary.three_way = read_three_way(pages, orders=order_ids)
    except Refused as refusal:
        summary.notes.append(f"three-way check: {refusal}")
    try:
        trial = await client.get("settlement", "/v1/ledger/trial-balance", token=token)
        summary.trial_balance = read_trial_balance(trial)
    except Refused as refusal:
        summary.notes.append(f"trial balance: {refusal}")
