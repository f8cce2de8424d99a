"""What happens during the day, decided up front from a seed (pure, no I/O).

The cast and the catalog are fixed (a co-sell deal reads best with the same
names every time); who signs up, what is ordered and how each order ends are
drawn from ``random.Random(seed)``, so the same seed plays the same day.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["isv", "managed_service", "integrator", "reseller"]

# How an order is meant to end; the partners and the customer act it out.
#   fulfilled   every partner accepts, then every partner completes
#   confirmed   every partner accepts; delivery is still under way at day's end
#   rejected    one partner rejects (the others accept, then are compensated)
#   late        one partner never answers in time, so the acceptance deadline fires
#   withdrawn   the customer cancels after confirmation (a refund)
Fate = Literal["fulfilled", "confirmed", "rejected", "late", "withdrawn"]
FATES: tuple[Fate, ...] = ("fulfilled", "confirmed", "rejected", "late", "withdrawn")
FATE_WEIGHTS: tuple[int, ...] = (70, 10, 7, 6, 7)


@dataclass(frozen=True)
class PartnerSpec:
    key: str
    name: str
    kind: Kind


@dataclass(frozen=True)
class AgreementSpec:
    """``grantor`` lets ``grantee`` sell its part, keeping ``share_bps`` of the net."""

    key: str
    grantor: str
    grantee: str
    role: Kind
    share_bps: int


@dataclass(frozen=True)
class ComponentSpec:
    partner: str
    role: Kind
    name: str
    pricing: dict[str, Any]
    agreement: str | None = None

    @property
    def metered(self) -> bool:
        return bool(self.pricing["model"] == "usage")


@dataclass(frozen=True)
class OfferingSpec:
    key: str
    owner: str
    name: str
    description: str
    components: tuple[ComponentSpec, ...]
    popularity: int  # relative weight when customers pick what to buy


def _one_time(amount: int) -> dict[str, Any]:
    return {"model": "one_time", "unit_amount": amount}


def _monthly(amount: int) -> dict[str, Any]:
    return {"model": "subscription", "unit_amount": amount, "interval": "month"}


def _yearly(amount: int) -> dict[str, Any]:
    return {"model": "subscription", "unit_amount": amount, "interval": "year"}


def _metered(amount: int, unit: str) -> dict[str, Any]:
    return {"model": "usage", "unit_amount": amount, "unit": unit}


PARTNERS: tuple[PartnerSpec, ...] = (
    PartnerSpec("acme", "Acme Data", "isv"),
    PartnerSpec("harbor", "Blue Harbor Cloud Ops", "managed_service"),
    PartnerSpec("crestline", "Crestline Consulting", "integrator"),
    PartnerSpec("globex", "Globex Analytics", "isv"),
    PartnerSpec("northwind", "Northwind Resale", "reseller"),
)

AGREEMENTS: tuple[AgreementSpec, ...] = (
    AgreementSpec("acme-harbor", grantor="acme", grantee="harbor", role="isv", share_bps=7000),
    AgreementSpec(
        "crestline-harbor", grantor="crestline", grantee="harbor", role="integrator", share_bps=9000
    ),
    AgreementSpec(
        "globex-northwind", grantor="globex", grantee="northwind", role="isv", share_bps=8000
    ),
)

OFFERINGS: tuple[OfferingSpec, ...] = (
    OfferingSpec(
        "managed-acme",
        owner="harbor",
        name="Managed Acme DB",
        description="Acme DB run for you by Blue Harbor, migrated by Crestline.",
        components=(
            ComponentSpec("acme", "isv", "Acme DB licence", _monthly(4_900), "acme-harbor"),
            ComponentSpec("acme", "isv", "Acme DB storage", _metered(12, "GB-hour"), "acme-harbor"),
            ComponentSpec("harbor", "managed_service", "24/7 operations", _monthly(15_000)),
            ComponentSpec(
                "crestline",
                "integrator",
                "Migration and go-live",
                _one_time(90_000),
                "crestline-harbor",
            ),
        ),
        popularity=5,
    ),
    OfferingSpec(
        "acme-cloud",
        owner="acme",
        name="Acme DB Cloud",
        description="Acme DB, self-service.",
        components=(ComponentSpec("acme", "isv", "Acme DB Cloud", _monthly(2_900)),),
        popularity=3,
    ),
    OfferingSpec(
        "crestline-review",
        owner="crestline",
        name="Architecture review",
        description="Two weeks of Crestline architects.",
        components=(
            ComponentSpec("crestline", "integrator", "Architecture review", _one_time(250_000)),
        ),
        popularity=1,
    ),
    OfferingSpec(
        "harbor-backup",
        owner="harbor",
        name="Harbor Backup",
        description="Nightly backups, kept 90 days.",
        components=(ComponentSpec("harbor", "managed_service", "Backup", _monthly(1_900)),),
        popularity=2,
    ),
    OfferingSpec(
        "globex-insights",
        owner="globex",
        name="Globex Insights",
        description="Dashboards for everything.",
        components=(ComponentSpec("globex", "isv", "Globex Insights", _yearly(120_000)),),
        popularity=2,
    ),
    OfferingSpec(
        "northwind-globex",
        owner="northwind",
        name="Globex Insights by Northwind",
        description="Globex Insights with Northwind's onboarding.",
        components=(
            ComponentSpec("globex", "isv", "Globex Insights", _yearly(120_000), "globex-northwind"),
            ComponentSpec("northwind", "reseller", "Onboarding", _one_time(15_000)),
        ),
        popularity=2,
    ),
)

_FIRST = ("Ada", "Ben", "Chen", "Dana", "Emil", "Fatima", "Gus", "Hana", "Ivo", "Jun", "Kira")
_COMPANY = ("Fabrikam", "Contoso", "Initech", "Umbrella", "Hooli", "Vandelay", "Wonka", "Stark")


@dataclass(frozen=True)
class PlannedCustomer:
    name: str
    email: str


@dataclass(frozen=True)
class PlannedLine:
    offering: str
    quantity: int


@dataclass(frozen=True)
class PlannedOrder:
    number: int
    customer: int  # index into Plan.customers
    lines: tuple[PlannedLine, ...]
    fate: Fate
    # The partner whose answer decides a rejected or late order; None otherwise.
    decider: str | None
    # GB-hours the usage-priced components report once the order is confirmed.
    usage: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    seed: int
    customers: tuple[PlannedCustomer, ...]
    orders: tuple[PlannedOrder, ...]


def offering(key: str) -> OfferingSpec:
    return next(spec for spec in OFFERINGS if spec.key == key)


def partner(key: str) -> PartnerSpec:
    return next(spec for spec in PARTNERS if spec.key == key)


def partners_of(order: PlannedOrder) -> tuple[str, ...]:
    """Every partner that gets a fulfilment request for the order, in catalog order."""
    involved = {c.partner for line in order.lines for c in offering(line.offering).components}
    return tuple(spec.key for spec in PARTNERS if spec.key in involved)


def metered_components(order: PlannedOrder) -> tuple[tuple[str, ComponentSpec], ...]:
    """(offering key, component) for each usage-priced part the order bought."""
    return tuple(
        (line.offering, component)
        for line in order.lines
        for component in offering(line.offering).components
        if component.metered
    )


# What one partner does with its fulfilment request for an order.
Answer = Literal["reject", "answer late", "accept", "accept and complete"]


def answer(order: PlannedOrder, partner_key: str) -> Answer:
    if order.decider == partner_key and order.fate == "rejected":
        return "reject"
    if order.decider == partner_key and order.fate == "late":
        return "answer late"
    return "accept and complete" if order.fate == "fulfilled" else "accept"


def usage_reported_by(order: PlannedOrder, partner_key: str) -> tuple[int, ...]:
    """The meter readings a partner reports once the order is confirmed.

    Only orders that stay confirmed or are fulfilled are metered: usage on an
    order that is about to be cancelled would only be refunded again.
    """
    if order.fate not in ("fulfilled", "confirmed"):
        return ()
    return tuple(
        quantity
        for (_, component), quantity in zip(metered_components(order), order.usage, strict=True)
        if component.partner == partner_key
    )


def make_plan(*, seed: int, customers: int, orders: int, run_id: str) -> Plan:
    """The day's customers and orders.  ``run_id`` keeps e-mail addresses unique per run."""
    if customers < 1 or orders < 0:
        raise ValueError("need at least one customer and no negative number of orders")
    rng = random.Random(seed)
    people = tuple(
        PlannedCustomer(
            name=f"{rng.choice(_FIRST)} at {rng.choice(_COMPANY)}",
            email=f"buyer{number}.{run_id}@example.com",
        )
        for number in range(customers)
    )
    keys = [spec.key for spec in OFFERINGS]
    weights = [spec.popularity for spec in OFFERINGS]
    planned: list[PlannedOrder] = []
    for number in range(orders):
        picked = rng.choices(keys, weights, k=1)
        if rng.random() < 0.2:
            second = rng.choices(keys, weights, k=1)[0]
            if second not in picked:
                picked.append(second)
        lines = tuple(PlannedLine(key, rng.choice((1, 1, 1, 2, 3))) for key in picked)
        fate: Fate = rng.choices(FATES, FATE_WEIGHTS, k=1)[0]
        draft = PlannedOrder(number, rng.randrange(customers), lines, fate, None, ())
        decider = rng.choice(partners_of(draft)) if fate in ("rejected", "late") else None
        usage = tuple(rng.randint(20, 400) for _ in metered_components(draft))
        planned.append(PlannedOrder(number, draft.customer, lines, fate, decider, usage))
    return Plan(seed=seed, customers=people, orders=tuple(planned))


def expected_status(fate: Fate, *, deadline_fires: bool) -> str:
    """The order status a fate should end in by the end of the day."""
    if fate == "fulfilled":
        return "fulfilled"
    if fate == "confirmed":
        return "confirmed"
    if fate == "late" and not deadline_fires:
        return "pending"
    return "cancelled"
