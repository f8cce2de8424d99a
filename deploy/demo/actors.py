"""The people of the day: the operator, the partners and the customers.

Each acts only through the public doors: HTTP for everything they do, and the
``orders.fulfillments`` topic for the requests partners are asked to fulfil.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from deploy.demo import plan
from deploy.demo.client import Marketplace, Refused, ServiceDown
from deploy.demo.plan import Plan, PlannedOrder
from deploy.demo.progress import Progress
from shared.contracts import fulfillments
from shared.contracts.envelope import EventRegistry, UnknownEvent, decode_envelope
from shared.contracts.fulfillments import (
    FulfillmentCancelled,
    FulfillmentRequested,
    FulfillmentState,
)

T = TypeVar("T")

# Right after an account or offering is created, orders may not have read it
# from the catalog's topics yet and answers 401/422; the first orders retry that
# for this long before a refusal counts.
WARM_UP_SECONDS = 20.0
# A partner may complete (or report usage) only once the order is confirmed,
# which orders decides asynchronously after the last acceptance.
CONFIRMATION_WAIT_SECONDS = 20.0
# Orders sweeps for passed deadlines on its own timer and announces the
# cancellation through its outbox; under load that lags the deadline itself.
DEADLINE_SLACK_SECONDS = 30.0


def now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Account:
    id: str
    token: str


@dataclass
class Cast:
    """Who is who once the catalog is open: partners, agreements, offerings by plan key."""

    partners: dict[str, Account] = field(default_factory=dict)
    agreements: dict[str, str] = field(default_factory=dict)
    offerings: dict[str, str] = field(default_factory=dict)
    customers: list[Account] = field(default_factory=list)

    def partner_key(self, partner_id: str) -> str | None:
        return next((key for key, a in self.partners.items() if a.id == partner_id), None)


async def gather_limited(limit: int, jobs: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``jobs`` with at most ``limit`` at a time; results in job order."""
    gate = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    return list(await asyncio.gather(*(run(job) for job in jobs)))


class Operator:
    def __init__(self, client: Marketplace, token: str, say: Callable[[str], None]) -> None:
        self.client = client
        self.token = token
        self.say = say

    async def open_catalog(self) -> Cast:
        """Onboard the partners; they make their agreements and publish their offerings."""
        cast = Cast()
        for spec in plan.PARTNERS:
            body = await self.client.create(
                "catalog",
                "/v1/partners",
                token=self.token,
                body={"name": spec.name, "kind": spec.kind},
            )
            cast.partners[spec.key] = Account(body["id"], body["token"])
            self.say(f"  onboarded {spec.name} ({spec.kind})")
        for agreement in plan.AGREEMENTS:
            grantor = cast.partners[agreement.grantor]
            body = await self.client.create(
                "catalog",
                "/v1/agreements",
                token=grantor.token,
                body={
                    "grantee_id": cast.partners[agreement.grantee].id,
                    "role": agreement.role,
                    "share_bps": agreement.share_bps,
                },
            )
            cast.agreements[agreement.key] = body["id"]
            self.say(
                f"  {plan.partner(agreement.grantor).name} lets "
                f"{plan.partner(agreement.grantee).name} co-sell its part "
                f"for {agreement.share_bps / 100:g} % of the net"
            )
        for offering in plan.OFFERINGS:
            owner = cast.partners[offering.owner]
            components: list[dict[str, Any]] = []
            for component in offering.components:
                part: dict[str, Any] = {
                    "partner_id": cast.partners[component.partner].id,
                    "role": component.role,
                    "name": component.name,
                    "pricing": component.pricing,
                }
                if component.agreement is not None:
                    part["agreement_id"] = cast.agreements[component.agreement]
                components.append(part)
            draft = await self.client.create(
                "catalog",
                "/v1/offerings",
                token=owner.token,
                body={
                    "name": offering.name,
                    "description": offering.description,
                    "currency": "USD",
                    "components": components,
                },
            )
            await self.client.act(
                "catalog", f"/v1/offerings/{draft['id']}/publish", token=owner.token
            )
            cast.offerings[offering.key] = draft["id"]
            partners = sorted({plan.partner(c.partner).name for c in offering.components})
            self.say(f"  published {offering.name!r} ({', '.join(partners)})")
        return cast


async def sign_up_customers(
    client: Marketplace, the_plan: Plan, cast: Cast, concurrency: int
) -> None:
    async def sign_up(customer: plan.PlannedCustomer) -> Account:
        body = await client.create(
            "catalog",
            "/v1/customers",
            token=None,
            body={"name": customer.name, "email": customer.email},
        )
        return Account(body["id"], body["token"])

    cast.customers = await gather_limited(
        concurrency, [functools.partial(sign_up, c) for c in the_plan.customers]
    )


class Script:
    """Which planned order each placed order is, so partners know how to act on it.

    A fulfilment request can reach a partner before the customer has read the
    201, so partners wait for the customer to register the order here.
    """

    def __init__(self) -> None:
        self._orders: dict[str, asyncio.Future[PlannedOrder]] = {}

    def _slot(self, order_id: str) -> asyncio.Future[PlannedOrder]:
        if order_id not in self._orders:
            self._orders[order_id] = asyncio.get_running_loop().create_future()
        return self._orders[order_id]

    def placed(self, order_id: str, planned: PlannedOrder) -> None:
        slot = self._slot(order_id)
        if not slot.done():
            slot.set_result(planned)

    async def planned(self, order_id: str, timeout: float) -> PlannedOrder | None:  # noqa: ASYNC109
        try:
            return await asyncio.wait_for(asyncio.shield(self._slot(order_id)), timeout)
        except TimeoutError:
            return None

    def placed_orders(self) -> dict[str, PlannedOrder]:
        return {order_id: slot.result() for order_id, slot in self._orders.items() if slot.done()}


class Customers:
    def __init__(self, client: Marketplace, cast: Cast, script: Script) -> None:
        self.client = client
        self.cast = cast
        self.script = script
        self.refused: Counter[str] = Counter()
        self.cancels_refused: Counter[int] = Counter()
        self._warm_until = 0.0
        self._withdrawals: set[asyncio.Task[None]] = set()

    async def place_all(self, orders: Iterable[PlannedOrder], concurrency: int) -> float:
        """Place every planned order, ``concurrency`` at a time; seconds it took."""
        todo = list(orders)
        progress = Progress(len(todo), "orders placed")
        self._warm_until = asyncio.get_running_loop().time() + WARM_UP_SECONDS
        queue: asyncio.Queue[PlannedOrder] = asyncio.Queue()
        for order in todo:
            queue.put_nowait(order)

        async def worker() -> None:
            while not queue.empty():
                await self._place(queue.get_nowait())
                progress.advance()

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        return progress.finish()

    async def _place(self, order: PlannedOrder) -> None:
        customer = self.cast.customers[order.customer]
        body = {
            "lines": [
                {"offering_id": self.cast.offerings[line.offering], "quantity": line.quantity}
                for line in order.lines
            ]
        }
        loop = asyncio.get_running_loop()
        delay = 0.2
        while True:
            try:
                placed = await self.client.create(
                    "orders", "/v1/orders", token=customer.token, body=body
                )
            except Refused as refusal:
                # 401/422 right after start-up: orders has not read the new
                # customer or offering from the catalog's topics yet.
                if refusal.status in (401, 422) and loop.time() < self._warm_until:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                self.refused[f"{refusal.status} {_problem_title(refusal.body)}"] += 1
                return
            break
        self.script.placed(placed["id"], order)
        if order.fate == "withdrawn":
            task = asyncio.get_running_loop().create_task(self._withdraw(placed["id"], customer))
            self._withdrawals.add(task)

    async def drain(self) -> None:
        """Wait for the customers still about to cancel."""
        await asyncio.gather(*self._withdrawals, return_exceptions=True)

    async def _withdraw(self, order_id: str, customer: Account) -> None:
        """Cancel once the order is confirmed (so something is charged and refunded)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + CONFIRMATION_WAIT_SECONDS
        while loop.time() < give_up:
            order = await self.client.get("orders", f"/v1/orders/{order_id}", token=customer.token)
            if order.get("status") == "confirmed":
                break
            if order.get("status") in ("cancelled", "fulfilled"):
                return
            await asyncio.sleep(0.3)
        try:
            await self.client.act("orders", f"/v1/orders/{order_id}/cancel", token=customer.token)
        except Refused as refusal:
            self.cancels_refused[refusal.status] += 1


def _problem_title(body: object) -> str:
    return str(body.get("title", "")) if isinstance(body, dict) else ""


class PartnerDesk:
    """Every demo partner's fulfilment desk, fed from the ``orders.fulfillments`` topic."""

    def __init__(
        self,
        client: Marketplace,
        cast: Cast,
        script: Script,
        consumer: AIOKafkaConsumer,
        *,
        deadline_wait: float,
    ) -> None:
        self.client = client
        self.cast = cast
        self.script = script
        self.consumer = consumer
        self.deadline_wait = deadline_wait
        self.answers: Counter[str] = Counter()
        self.usage_reports = 0
        # The orders service's acceptance deadline, as the requests show it.
        self.deadline_seconds: float | None = None
        self._registry = EventRegistry(fulfillments.TOPIC.events)
        self._handled: set[str] = set()
        self._accepted: dict[str, set[str]] = {}
        self._all_accepted: dict[str, asyncio.Event] = {}
        self._cancelled: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Late orders whose acceptance deadline falls within the day: expected cancelled.
        self.deadline_orders: set[str] = set()

    async def read(self) -> None:
        """Consume until cancelled; each request is answered in its own task."""
        while True:
            batches = await self.consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    self._receive(record.value)

    def _receive(self, value: bytes) -> None:
        try:
            event = self._registry.decode(decode_envelope(value))
        except (UnknownEvent, msgspec.DecodeError):
            return  # not ours to judge; the services dead-letter bad events
        match event:
            case FulfillmentRequested(fulfillment=request):
                key = self.cast.partner_key(request.partner_id)
                if key is None or request.fulfillment_id in self._handled:
                    return
                self._handled.add(request.fulfillment_id)
                if self.deadline_seconds is None:
                    given = request.accept_by - request.changed_at
                    self.deadline_seconds = round(given.total_seconds())
                task = asyncio.get_running_loop().create_task(self._answer_or_note(key, request))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            case FulfillmentCancelled(fulfillment=cancelled):
                if self.cast.partner_key(cancelled.partner_id) is not None:
                    self.answers["cancelled by orders"] += 1
                    self._cancelled.setdefault(cancelled.fulfillment_id, asyncio.Event()).set()
            case _:
                return

    async def _answer_or_note(self, key: str, request: FulfillmentState) -> None:
        try:
            await self._answer(key, request)
        except (Refused, ServiceDown) as exc:
            self.answers[f"failed: {exc}"[:120]] += 1

    async def _answer(self, key: str, request: FulfillmentState) -> None:
        order = await self.script.planned(request.order_id, timeout=30)
        if order is None:
            return  # not an order this demo placed
        partner = self.cast.partners[key]
        path = f"/v1/fulfillments/{request.fulfillment_id}"
        what = plan.answer(order, key)
        if what == "reject":
            reason = {"reason": "no capacity this month"}
            await self._try(partner, f"{path}/reject", "rejected", reason)
            return
        if what == "answer late":
            await self._answer_late(partner, request, path)
            return
        if not await self._try(partner, f"{path}/accept", "accepted"):
            return
        everyone = self._accepted_by(request.order_id, key, order)
        readings = plan.usage_reported_by(order, key)
        if what == "accept" and not readings:
            return
        try:
            await asyncio.wait_for(everyone.wait(), CONFIRMATION_WAIT_SECONDS)
        except TimeoutError:
            self.answers["gave up waiting for the other partners"] += 1
            return
        for quantity in readings:
            await self._report_usage(partner, request.order_id, quantity)
        if what == "accept and complete":
            await self._until_confirmed(lambda: self._try(partner, f"{path}/complete", "completed"))

    async def _answer_late(self, partner: Account, request: FulfillmentState, path: str) -> None:
        """Answer only after the deadline has cancelled the order, if that happens today."""
        wait = (request.accept_by - now()).total_seconds()
        if wait > self.deadline_wait:
            self.answers["never answered"] += 1
            return
        self.deadline_orders.add(request.order_id)
        cancelled = self._cancelled.setdefault(request.fulfillment_id, asyncio.Event())
        try:
            await asyncio.wait_for(cancelled.wait(), max(0.0, wait) + DEADLINE_SLACK_SECONDS)
        except TimeoutError:
            self.answers["never answered (deadline did not fire in time)"] += 1
            return
        await self._try(partner, f"{path}/accept", "accepted after the deadline")

    def _accepted_by(self, order_id: str, key: str, order: PlannedOrder) -> asyncio.Event:
        """Note ``key``'s acceptance; the event is set once every partner has accepted."""
        accepted = self._accepted.setdefault(order_id, set())
        everyone = self._all_accepted.setdefault(order_id, asyncio.Event())
        accepted.add(key)
        if accepted >= set(plan.partners_of(order)):
            everyone.set()
        return everyone

    async def _report_usage(self, partner: Account, order_id: str, quantity: int) -> None:
        body = {
            "usage_id": str(uuid.uuid4()),
            "order_id": order_id,
            "component_partner_id": partner.id,
            "quantity": quantity,
            "occurred_at": rfc3339(now()),
        }

        async def report() -> bool:
            await self.client.create("orders", "/v1/usage", token=partner.token, body=body)
            self.usage_reports += 1
            return True

        await self._until_confirmed(report)

    async def _until_confirmed(self, attempt: Callable[[], Awaitable[bool]]) -> None:
        """Retry what needs a confirmed order while orders is still confirming it."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + CONFIRMATION_WAIT_SECONDS
        delay = 0.1
        while True:
            try:
                await attempt()
                return
            except Refused as refusal:
                if refusal.status not in (409, 422) or loop.time() > give_up:
                    self.answers[f"refused {refusal.status}"] += 1
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _try(self, partner: Account, path: str, what: str, body: object = None) -> bool:
        try:
            await self.client.act("orders", path, token=partner.token, body=body)
        except Refused as refusal:
            if refusal.status == 409 and what != "completed":
                # The order moved on (another partner rejected, the deadline fired).
                self.answers[f"{what}, refused: the order was already cancelled"] += 1
                return False
            raise
        self.answers[what] += 1
        return True

    async def drain(self) -> None:
        """Wait for the answers already under way (late ones may sleep to their deadline)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def open_fulfilment_feed(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """A consumer positioned at the end of every partition of ``topic``, before the day starts.

    No consumer group: the demo is a viewer with fresh partners, so it needs
    only what is published from now on, and must not miss any of it.  The end
    offsets are fixed explicitly (not a lazy "latest" reset, which would skip
    whatever is published before the first fetch).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found = [d for d in described if d.get("topic") == topic and d.get("error_code") == 0]
    if not found or not found[0].get("partitions"):
        raise LookupError(
            f"Kafka at {bootstrap} has no topic {topic!r}: is the orders service running "
            "with the same MARKETPLACE_TOPIC_PREFIX?"
        )
    partitions = sorted(
        (TopicPartition(topic, p["partition"]) for p in found[0]["partitions"]),
        key=lambda partition: int(partition.partition),
    )
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(partitions)
        for partition, offset in (await consumer.end_offsets(partitions)).items():
            consumer.seek(partition, offset)
    except BaseException:
        await consumer.stop()
        raise
    return consumer
