"""A steady, seeded order load: simulated customers and partners over HTTP only.

Every order's fate is drawn from the seed when it is placed (which partners
accept, reject or never answer, who delivers, whether the customer cancels,
how much usage is metered), so a failing run replays with the same seed.
The actors keep trying through crashes: a call that got no answer is retried
(with its idempotency key, or by reading the state again), so every 201 the
customers saw is an order the checks can hold the marketplace to.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tests.e2e.marketplace import Deal, Marketplace, Party, Unanswered
from tests.support.invariants import UsageReport
from tests.support.waiting import wait_for

Answer = Literal["accept", "reject", "ignore"]
# The roles of the deal, keyed as Deal.partners names them.
JOINT_PARTNERS = ("isv", "integrator", "msp")
LISTING_PARTNERS = ("integrator",)
USAGE_REPORTER = "msp"  # the joint offering's metered component is the provider's
ACTOR_POLL_SECONDS = 0.2
# After an outage of orders, how long partners may take to catch up on their requests.
OUTAGE_GRACE = timedelta(seconds=5)


@dataclass(frozen=True)
class OrderPlan:
    """How one order's parties will behave, drawn from the seed."""

    index: int
    customer: int
    lines: tuple[tuple[str, int], ...]  # ("joint" | "listing", quantity)
    answers: dict[str, Answer]
    completes: frozenset[str]
    cancel_after: float | None  # seconds after placement the customer cancels, if at all
    usage: tuple[int, ...]  # GB-hours the provider reports once the order is confirmed

    @property
    def partners(self) -> tuple[str, ...]:
        keys: list[str] = []
        for offering, _ in self.lines:
            for key in JOINT_PARTNERS if offering == "joint" else LISTING_PARTNERS:
                if key not in keys:
                    keys.append(key)
        return tuple(keys)

    @property
    def all_accept(self) -> bool:
        return all(answer == "accept" for answer in self.answers.values())

    @property
    def all_complete(self) -> bool:
        return self.all_accept and all(key in self.completes for key in self.partners)


def draw_plan(rng: random.Random, index: int, customers: int) -> OrderPlan:
    lines: list[tuple[str, int]] = [("joint", rng.randint(1, 3))]
    if rng.random() < 0.3:
        lines.append(("listing", rng.randint(1, 2)))
    if rng.random() < 0.2:
        lines = [("listing", rng.randint(1, 4))]
    partial = OrderPlan(index, 0, tuple(lines), {}, frozenset(), None, ())
    answers: dict[str, Answer] = {}
    for key in partial.partners:
        roll = rng.random()
        answers[key] = "reject" if roll < 0.04 else "ignore" if roll < 0.08 else "accept"
    completes = frozenset(key for key in partial.partners if rng.random() < 0.85)
    cancel_after = rng.uniform(0.0, 3.0) if rng.random() < 0.1 else None
    joint = any(offering == "joint" for offering, _ in lines)
    usage = tuple(rng.randint(1, 500) for _ in range(rng.randint(0, 2))) if joint else ()
    return OrderPlan(
        index=index,
        customer=rng.randrange(customers),
        lines=tuple(lines),
        answers=answers,
        completes=completes,
        cancel_after=cancel_after,
        usage=usage,
    )


@dataclass
class Placed:
    plan: OrderPlan
    order_id: str
    cancel_done: bool = False
    cancel_accepted: bool = False
    usage_left: list[tuple[str, int]] = field(default_factory=list)  # (usage_id, quantity)
    # Answers orders refused with 409 (the order had moved on, e.g. its deadline passed).
    refused: list[str] = field(default_factory=list)


class Workload:
    """Customers placing orders at a steady rate and partners answering them."""

    def __init__(self, mp: Marketplace, deal: Deal, seed: int, *, rate: float = 4.0) -> None:
        self.mp = mp
        self.deal = deal
        self.seed = seed
        self.rate = rate
        self._rng = random.Random(seed)
        self.placed: dict[str, Placed] = {}
        self.usage: list[UsageReport] = []
        self.unexpected: list[str] = []
        self._placements: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._actors: list[asyncio.Task[None]] = []
        self._offerings = {"joint": deal.joint_offering_id, "listing": deal.listing_id}
        # When orders could not answer (killed, paused): a deadline may pass unanswered then.
        self.outages: list[tuple[datetime, datetime]] = []

    @contextlib.asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        """Record the block as a time orders could not answer partners."""
        started = datetime.now(UTC)
        try:
            yield
        finally:
            self.outages.append((started, datetime.now(UTC)))

    # ---------------------------------------------------------------- customers

    async def place_orders(self, duration: float) -> None:
        """Place ``rate`` orders a second for ``duration`` seconds (each settles on its own)."""
        count = int(duration * self.rate)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for index in range(count):
            plan = draw_plan(self._rng, index, len(self.deal.customers))
            self._placements.append(asyncio.create_task(self._place(plan)))
            # Pacing the load is the point here, not waiting for a condition.
            await asyncio.sleep(max(0.0, started + (index + 1) / self.rate - loop.time()))

    async def _place(self, plan: OrderPlan) -> None:
        customer = self.deal.customers[plan.customer]
        lines = [
            {"offering_id": self._offerings[offering], "quantity": quantity}
            for offering, quantity in plan.lines
        ]
        reply = await self.mp.answered(
            "POST", "orders", "/v1/orders", token=customer.token, json={"lines": lines},
            idempotency_key=f"order-{self.seed}-{plan.index}",
        )  # fmt: skip
        if reply.status != 201:
            self.unexpected.append(f"order {plan.index} refused: {reply.status} {reply.body}")
            return
        order_id = reply.body["id"]
        placed = Placed(plan, order_id)
        placed.usage_left = [
            (f"{order_id}-u{n}", quantity) for n, quantity in enumerate(plan.usage)
        ]
        self.placed[order_id] = placed
        if plan.cancel_after is None:
            placed.cancel_done = True
            return
        await asyncio.sleep(plan.cancel_after)  # the customer changes their mind later
        cancel = await self.mp.answered(
            "POST", "orders", f"/v1/orders/{order_id}/cancel", token=customer.token
        )
        if cancel.status == 200:
            placed.cancel_accepted = True
        elif cancel.status != 409:
            self.unexpected.append(f"cancel {order_id}: {cancel.status} {cancel.body}")
        placed.cancel_done = True

    async def placements_done(self) -> None:
        await asyncio.gather(*self._placements)

    async def abort(self) -> None:
        """Stop every actor and placement still running (a failed test ends here)."""
        self._stopping.set()
        for task in [*self._placements, *self._actors]:
            task.cancel()
        await asyncio.gather(*self._placements, *self._actors, return_exceptions=True)

    # ---------------------------------------------------------------- partners

    def start_partners(self) -> None:
        for key, party in self.deal.partners.items():
            self._actors.append(asyncio.create_task(self._partner(key, party)))

    async def stop_partners(self) -> None:
        self._stopping.set()
        await asyncio.gather(*self._actors)

    async def _partner(self, key: str, party: Party) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(Unanswered):
                await self._partner_round(key, party)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), ACTOR_POLL_SECONDS)

    async def _fulfillments(self, party: Party, status: str) -> list[Any]:
        return await self.mp.pages("orders", "/v1/fulfillments", token=party.token, status=status)

    async def _partner_round(self, key: str, party: Party) -> None:
        for item in await self._fulfillments(party, "requested"):
            placed = self.placed.get(item["order_id"])
            if placed is None:  # its 201 is still on the way to the customer
                continue
            answer = placed.plan.answers.get(key, "accept")
            if answer == "accept":
                await self._answer(placed, party, item["id"], "accept")
            elif answer == "reject":
                await self._answer(placed, party, item["id"], "reject", {"reason": "no capacity"})
        for item in await self._fulfillments(party, "accepted"):
            placed = self.placed.get(item["order_id"])
            if placed is None:
                continue
            if key == USAGE_REPORTER:
                await self._report_usage(placed, party)
            if key in placed.plan.completes:
                await self._answer(placed, party, item["id"], "complete", quiet_conflict=True)
        if key == USAGE_REPORTER:
            for item in await self._fulfillments(party, "completed"):
                placed = self.placed.get(item["order_id"])
                if placed is not None:
                    await self._report_usage(placed, party)

    async def _answer(
        self,
        placed: Placed,
        party: Party,
        fulfillment_id: str,
        verb: str,
        body: dict[str, str] | None = None,
        *,
        quiet_conflict: bool = False,
    ) -> None:
        reply = await self.mp.call(
            "POST", "orders", f"/v1/fulfillments/{fulfillment_id}/{verb}",
            token=party.token, json=body,
        )  # fmt: skip
        if reply.status == 409:
            # The order moved on first (cancelled, deadline) or is not confirmed yet.
            if not quiet_conflict:
                placed.refused.append(f"{verb} {fulfillment_id}: {reply.body.get('detail')}")
        elif reply.status != 200:
            self.unexpected.append(f"{verb} {fulfillment_id}: {reply.status} {reply.body}")

    async def _report_usage(self, placed: Placed, party: Party) -> None:
        while placed.usage_left:
            usage_id, quantity = placed.usage_left[0]
            reply = await self.mp.call(
                "POST", "orders", "/v1/usage", token=party.token,
                json={
                    "usage_id": usage_id, "order_id": placed.order_id, "quantity": quantity,
                    "occurred_at": datetime.now(UTC).isoformat(),
                },
            )  # fmt: skip
            if reply.status == 422:
                return  # not confirmed yet, or cancelled meanwhile: asked again next round
            if reply.status != 202:
                self.unexpected.append(f"usage {usage_id}: {reply.status} {reply.body}")
                return
            placed.usage_left.pop(0)
            self.usage.append(UsageReport(usage_id, placed.order_id, party.id, quantity))

    # ---------------------------------------------------------------- settling

    async def orders_as_operator(self) -> dict[str, Any]:
        """Every order of this stack, as the operator reads it."""
        items = await self.mp.pages("orders", "/v1/orders", token=self.mp.stack.operator_token)
        return {item["id"]: item for item in items}

    def _done(self, placed: Placed, order: dict[str, Any]) -> bool:
        status = order["status"]
        if status == "cancelled":
            return True
        if status == "pending" or placed.usage_left or not placed.cancel_done:
            return False
        # A confirmed order rests only if some partner never delivers.
        return status == "fulfilled" or not placed.plan.all_complete

    async def wait_until_done(self, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        """Until every order rests where its plan leads; return them as the operator sees them."""
        await asyncio.wait_for(self.placements_done(), timeout)
        last: dict[str, Any] = {}

        async def done() -> bool:
            try:
                last.update(await self.orders_as_operator())
            except Unanswered:
                return False
            return all(
                order_id in last and self._done(placed, last[order_id])
                for order_id, placed in self.placed.items()
            )

        try:
            await wait_for(done, timeout=timeout, interval=0.5, message="orders did not settle")
        except AssertionError as exc:
            stuck = [
                f"{order_id} {last.get(order_id, {}).get('status')} {placed}"
                for order_id, placed in self.placed.items()
                if order_id not in last or not self._done(placed, last[order_id])
            ]
            raise AssertionError(f"{exc}; {len(stuck)} not done, e.g. {stuck[:3]}") from None
        return last


def _in_outage(
    accept_by: str, outages: Sequence[tuple[datetime, datetime]], grace: timedelta
) -> bool:
    deadline = datetime.fromisoformat(accept_by)
    return any(start <= deadline <= end + grace for start, end in outages)


def plan_mismatches(
    placed: Iterable[Placed],
    orders: dict[str, Any],
    outages: Sequence[tuple[datetime, datetime]] = (),
) -> list[str]:
    """Orders whose final state does not follow from what their parties did.

    A deadline may cancel an order every partner meant to accept only if orders
    refused a late answer (409) or could not be reached around the deadline.
    """
    problems: list[str] = []
    for entry in placed:
        order = orders.get(entry.order_id)
        if order is None:
            problems.append(f"{entry.order_id}: got a 201 but the operator cannot see it")
            continue
        plan, status = entry.plan, order["status"]
        reason = order.get("cancel_reason")
        statuses = {f["partner_id"]: f["status"] for f in order["fulfillments"]}
        if status == "pending":
            problems.append(f"{entry.order_id}: still pending")
        elif status == "fulfilled" and not plan.all_complete:
            problems.append(f"{entry.order_id}: fulfilled, but {plan} never completes")
        elif status == "confirmed" and (not plan.all_accept or entry.cancel_accepted):
            problems.append(f"{entry.order_id}: confirmed against {plan} / {entry}")
        elif status == "cancelled":
            allowed = {"customer"} if entry.cancel_accepted else set()
            if "reject" in plan.answers.values():
                allowed.add("rejected")
            late = _in_outage(order["accept_by"], outages, OUTAGE_GRACE)
            if "ignore" in plan.answers.values() or entry.refused or late:
                allowed.add("deadline")
            if not allowed:
                problems.append(f"{entry.order_id}: cancelled, but nobody made it so: {entry}")
            elif reason is not None and reason not in allowed:
                problems.append(f"{entry.order_id}: cancelled for {reason}, expected {allowed}")
            if any(s in ("requested", "accepted") for s in statuses.values()):
                problems.append(f"{entry.order_id}: cancelled but not compensated: {statuses}")
        if status == "fulfilled" and set(statuses.values()) != {"completed"}:
            problems.append(f"{entry.order_id}: fulfilled with fulfilments {statuses}")
        asked = sorted(f["partner_id"] for f in order["fulfillments"])
        if len(asked) != len(plan.partners) or len(set(asked)) != len(asked):
            problems.append(f"{entry.order_id}: fulfilments for {asked}, not one per partner")
    return problems
