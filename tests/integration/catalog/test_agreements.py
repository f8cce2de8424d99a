"""Co-sell agreements: grant, read, list, revoke, expire, and what that does to offerings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.contracts import catalog_agreements, catalog_offerings
from shared.contracts.catalog_agreements import AgreementCreated, AgreementExpired, AgreementRevoked
from shared.contracts.catalog_offerings import OfferingOrderabilityChanged
from shared.http.pagination import encode_cursor
from tests.integration.catalog.conftest import Account, Catalog, TopicEvent
from tests.support.waiting import wait_for


async def test_a_partner_grants_a_co_sell_agreement(catalog: Catalog) -> None:
    isv = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    expires_at = datetime.now(UTC) + timedelta(days=30)
    reply = await catalog.call(
        "POST",
        "/v1/agreements",
        token=isv.token,
        body={
            "grantee_id": msp.id,
            "role": "isv",
            "share_bps": 7_000,
            "expires_at": expires_at.isoformat(),
        },
    )
    created = reply.expect(201)
    assert created["id"].startswith("agr_")
    assert {k: created[k] for k in ("grantor_id", "grantee_id", "role", "share_bps", "status")} == {
        "grantor_id": isv.id,
        "grantee_id": msp.id,
        "role": "isv",
        "share_bps": 7_000,
        "status": "active",
    }
    assert datetime.fromisoformat(created["expires_at"]) == expires_at
    assert created["ended_at"] is None


@pytest.mark.parametrize("share_bps", [0, 10_000])
async def test_the_share_may_be_anything_from_nothing_to_everything(
    catalog: Catalog, share_bps: int
) -> None:
    isv = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    agreement = await catalog.grant(isv, msp, share_bps=share_bps)
    assert agreement["share_bps"] == share_bps
    assert agreement["expires_at"] is None


async def test_both_parties_and_the_operator_read_an_agreement_nobody_else(
    catalog: Catalog,
) -> None:
    isv = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    stranger = await catalog.onboard_partner("reseller")
    customer = await catalog.sign_up_customer()
    agreement = await catalog.grant(isv, msp)
    path = f"/v1/agreements/{agreement['id']}"
    for token in (isv.token, msp.token, catalog.operator_token):
        assert (await catalog.call("GET", path, token=token)).expect(200) == agreement
    for token in (stranger.token, customer.token):
        assert (await catalog.call("GET", path, token=token)).status == 404
    missing = await catalog.call(
        "GET", "/v1/agreements/agr_00000000000000000000000000", token=isv.token
    )
    assert missing.status == 404


async def test_a_partner_lists_the_agreements_it_is_party_to_page_by_page(
    catalog: Catalog,
) -> None:
    msp = await catalog.onboard_partner("managed_service")
    granted = [await catalog.grant(await catalog.onboard_partner("isv"), msp) for _ in range(4)]
    own = await catalog.grant(msp, await catalog.onboard_partner("integrator"))
    stranger = await catalog.onboard_partner()
    await catalog.grant(stranger, await catalog.onboard_partner())

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await catalog.call("GET", "/v1/agreements", token=msp.token, params=params)).expect(
            200
        )
        pages += 1
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted([a["id"] for a in granted] + [own["id"]])
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen, reverse=True)  # newest first

    nothing = (await catalog.call("GET", "/v1/agreements", token=stranger.token)).expect(200)
    assert [a["grantor_id"] for a in nothing["items"]] == [stranger.id]


async def test_listing_agreements_is_for_partners(catalog: Catalog) -> None:
    customer = await catalog.sign_up_customer()
    assert (await catalog.call("GET", "/v1/agreements", token=customer.token)).status == 403
    assert (await catalog.call("GET", "/v1/agreements")).status == 401


@pytest.mark.parametrize(
    "position", [["agr_00000000000000000000000000", 1], [7], ["\x00"]], ids=repr
)
async def test_a_forged_agreements_cursor_is_refused_naming_it(
    catalog: Catalog, position: list[Any]
) -> None:
    partner = await catalog.onboard_partner()
    reply = await catalog.call(
        "GET", "/v1/agreements", token=partner.token, params={"cursor": encode_cursor(position)}
    )
    assert reply.status == 422, reply.body
    assert reply.fields == ["cursor"]


def _agreement_body(grantee: Account, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"grantee_id": grantee.id, "role": "isv", "share_bps": 1_000}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"share_bps": -1}, "share_bps"),
        ({"share_bps": 10_001}, "share_bps"),
        ({"share_bps": 12.5}, "share_bps"),
        ({"share_bps": None}, "share_bps"),
        ({"role": "vendor"}, "role"),
        ({"grantee_id": "ptn_00000000000000000000000000"}, "grantee_id"),
        ({"grantee_id": "Robert'); DROP TABLE partners;--"}, "grantee_id"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "2999-01-01T00:00:00"}, "expires_at"),
        ({"expires_at": "next tuesday"}, "expires_at"),
        ({"status": "revoked"}, "status"),
    ],
)
async def test_an_invalid_agreement_is_refused_naming_the_field(
    catalog: Catalog, changes: dict[str, Any], field: str
) -> None:
    isv = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    body = _agreement_body(msp, **changes)
    reply = await catalog.call("POST", "/v1/agreements", token=isv.token, body=body)
    assert reply.status == 422, reply.body
    assert reply.fields == [field]


async def test_a_partner_cannot_grant_an_agreement_to_itself(catalog: Catalog) -> None:
    isv = await catalog.onboard_partner("isv")
    reply = await catalog.call("POST", "/v1/agreements", token=isv.token, body=_agreement_body(isv))
    assert reply.status == 422
    assert reply.fields == ["grantee_id"]


async def test_only_partners_grant_agreements(catalog: Catalog) -> None:
    msp = await catalog.onboard_partner("managed_service")
    customer = await catalog.sign_up_customer()
    for token in (customer.token, catalog.operator_token):
        reply = await catalog.call("POST", "/v1/agreements", token=token, body=_agreement_body(msp))
        assert reply.status == 403
    reply = await catalog.call("POST", "/v1/agreements", body=_agreement_body(msp))
    assert reply.status == 401


async def test_only_the_grantor_revokes_and_only_once(catalog: Catalog) -> None:
    isv = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    stranger = await catalog.onboard_partner()
    customer = await catalog.sign_up_customer()
    agreement = await catalog.grant(isv, msp)
    revoke = f"/v1/agreements/{agreement['id']}/revoke"

    assert (await catalog.call("POST", revoke, token=stranger.token)).status == 404
    assert (await catalog.call("POST", revoke, token=msp.token)).status == 403
    assert (await catalog.call("POST", revoke, token=customer.token)).status == 403
    assert (await catalog.call("POST", revoke, token=catalog.operator_token)).status == 403
    still = await catalog.call("GET", f"/v1/agreements/{agreement['id']}", token=isv.token)
    assert still.expect(200)["status"] == "active"

    revoked = (await catalog.call("POST", revoke, token=isv.token)).expect(200)
    assert revoked["status"] == "revoked"
    assert revoked["ended_at"] is not None
    assert {k: revoked[k] for k in ("id", "grantor_id", "grantee_id", "share_bps")} == {
        k: agreement[k] for k in ("id", "grantor_id", "grantee_id", "share_bps")
    }
    assert (await catalog.call("POST", revoke, token=isv.token)).status == 409
    unknown = await catalog.call(
        "POST", "/v1/agreements/agr_00000000000000000000000000/revoke", token=isv.token
    )
    assert unknown.status == 404


async def test_agreement_changes_are_published_with_their_full_state(catalog: Catalog) -> None:
    isv = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    agreement = await catalog.grant(isv, msp, share_bps=4_200)
    await catalog.call("POST", f"/v1/agreements/{agreement['id']}/revoke", token=isv.token)

    events = await catalog.wait_for_events(
        catalog_agreements.TOPIC,
        lambda read: len([e for e in read if e.key == agreement["id"]]) >= 2,
        message="the agreement events did not arrive",
    )
    created, revoked = (e.event for e in events if e.key == agreement["id"])
    assert isinstance(created, AgreementCreated)
    assert created.agreement.status == "active"
    assert (created.agreement.grantor_id, created.agreement.grantee_id) == (isv.id, msp.id)
    assert created.agreement.share_bps == 4_200
    assert isinstance(revoked, AgreementRevoked)
    assert revoked.agreement.status == "revoked"
    assert revoked.agreement.ended_at is not None
    assert revoked.agreement.created_at == created.agreement.created_at


# What ending an agreement does to the offerings that depend on it


async def _co_sold_offering(
    catalog: Catalog, owner: Account, partner: Account, agreement: dict[str, Any]
) -> dict[str, Any]:
    return await catalog.publish_new(
        owner,
        components=[
            catalog.component(owner),
            catalog.component(partner, agreement=agreement, name="Run it"),
        ],
    )


def _orderability_changes(events: list[TopicEvent], offering_id: str) -> list[TopicEvent]:
    return [
        e
        for e in events
        if e.key == offering_id and isinstance(e.event, OfferingOrderabilityChanged)
    ]


async def test_revoking_an_agreement_makes_dependent_offerings_unorderable(
    catalog: Catalog,
) -> None:
    owner = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    agreement = await catalog.grant(msp, owner, share_bps=3_000)
    dependent = await _co_sold_offering(catalog, owner, msp, agreement)
    independent = await catalog.publish_new(owner)
    waiting_draft = await catalog.create_offering(
        owner, components=[catalog.component(msp, agreement=agreement)]
    )
    assert dependent["orderable"] is True
    assert dependent["components"][1]["share_bps"] == 3_000

    await catalog.call("POST", f"/v1/agreements/{agreement['id']}/revoke", token=msp.token)

    after = await catalog.offering(dependent["id"])
    assert after["orderable"] is False
    assert agreement["id"] in after["unorderable_reason"]
    assert "revoked" in after["unorderable_reason"]
    assert (after["status"], after["version"]) == ("published", dependent["version"])
    assert (await catalog.offering(independent["id"]))["orderable"] is True

    events = await catalog.wait_for_events(
        catalog_offerings.TOPIC,
        lambda read: bool(_orderability_changes(read, dependent["id"])),
        message="no orderability_changed event for the dependent offering",
    )
    (change,) = _orderability_changes(events, dependent["id"])
    assert change.envelope.type == "catalog.offering.orderability_changed"
    assert isinstance(change.event, OfferingOrderabilityChanged)
    assert change.event.offering.orderable is False
    assert change.event.offering.unorderable_reason == after["unorderable_reason"]
    assert change.event.offering.version == dependent["version"]
    assert not _orderability_changes(events, independent["id"])

    # A draft that named the agreement can no longer be published, nor a new one made.
    refused = await catalog.call(
        "POST", f"/v1/offerings/{waiting_draft['id']}/publish", token=owner.token
    )
    assert refused.status == 422
    assert refused.fields == ["components[0].agreement_id"]
    again = await catalog.call(
        "POST",
        "/v1/offerings",
        token=owner.token,
        body=catalog.offering_body(
            owner,
            components=[catalog.component(owner), catalog.component(msp, agreement=agreement)],
        ),
    )
    assert again.status == 422
    assert again.fields == ["components[1].agreement_id"]
    assert "revoked" in again.body["errors"][0]["message"]


async def test_an_expiring_agreement_makes_dependent_offerings_unorderable(
    catalog: Catalog,
) -> None:
    owner = await catalog.onboard_partner("isv")
    integrator = await catalog.onboard_partner("integrator")
    expires_at = datetime.now(UTC) + timedelta(seconds=2)
    agreement = await catalog.grant(integrator, owner, expires_at=expires_at)
    dependent = await _co_sold_offering(catalog, owner, integrator, agreement)
    assert dependent["orderable"] is True

    async def unorderable() -> dict[str, Any] | None:
        offering = await catalog.offering(dependent["id"])
        return offering if offering["orderable"] is False else None

    after = await wait_for(
        unorderable, timeout=20, message="the offering stayed orderable after expiry"
    )
    assert "expired" in after["unorderable_reason"]
    ended = await catalog.call("GET", f"/v1/agreements/{agreement['id']}", token=owner.token)
    assert ended.expect(200)["status"] == "expired"
    assert datetime.fromisoformat(ended.body["ended_at"]) == expires_at

    offerings = await catalog.wait_for_events(
        catalog_offerings.TOPIC,
        lambda read: bool(_orderability_changes(read, dependent["id"])),
        message="no orderability_changed event after expiry",
    )
    last_change = _orderability_changes(offerings, dependent["id"])[-1].event
    assert isinstance(last_change, OfferingOrderabilityChanged)
    assert last_change.offering.orderable is False
    agreements = await catalog.wait_for_events(
        catalog_agreements.TOPIC,
        lambda read: any(
            e.key == agreement["id"] and isinstance(e.event, AgreementExpired) for e in read
        ),
        message="no agreement.expired event",
    )
    assert [e.envelope.type for e in agreements if e.key == agreement["id"]] == [
        "catalog.agreement.created",
        "catalog.agreement.expired",
    ]

    refused = await catalog.call(
        "POST",
        "/v1/offerings",
        token=owner.token,
        body=catalog.offering_body(
            owner, components=[catalog.component(integrator, agreement=agreement)]
        ),
    )
    assert refused.status == 422
    assert refused.fields == ["components[0].agreement_id"]
    assert "expired" in refused.body["errors"][0]["message"]


# Races between ending an agreement and publishing an offering that depends on it.
#
# A test holds a SHARE lock on one table, so that a request stops right where it
# would write to it; the other request runs in that gap; then the lock goes.

Waiting = Callable[[], Awaitable[int]]


@asynccontextmanager
async def holding(catalog: Catalog, table: str) -> AsyncIterator[Waiting]:
    """Hold writes to ``table``; yield a count of the requests stuck on a lock."""
    async with catalog.database() as holder, catalog.database() as monitor:

        async def relay_idle() -> bool:
            unsent: int = await monitor.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            )
            return unsent == 0

        # The outbox relay writes too; with nothing to send it stays out of the way.
        await wait_for(relay_idle, message="the outbox relay did not catch up")

        async def waiting() -> int:
            count: int = await monitor.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query NOT ILIKE 'UPDATE outbox%'"
            )
            return count

        async with holder.transaction():
            await holder.execute(f"LOCK TABLE {table} IN SHARE MODE")
            yield waiting


async def _eventually_unorderable(catalog: Catalog, offering_id: str) -> None:
    async def unorderable() -> bool:
        return (await catalog.offering(offering_id))["orderable"] is False

    await wait_for(
        unorderable,
        timeout=10,
        message="published and orderable on an agreement no longer in force",
    )


async def test_a_revocation_racing_a_publish_still_stops_orders(catalog: Catalog) -> None:
    """The publish has read the agreement as active; it is revoked before the publish commits."""
    owner = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    agreement = await catalog.grant(msp, owner)
    draft = await catalog.create_offering(
        owner, components=[catalog.component(owner), catalog.component(msp, agreement=agreement)]
    )
    async with holding(catalog, "offering_versions") as waiting:
        publishing = asyncio.create_task(
            catalog.call("POST", f"/v1/offerings/{draft['id']}/publish", token=owner.token)
        )
        await wait_for(waiting, message="the publish never reached offering_versions")
        revoking = asyncio.create_task(
            catalog.call("POST", f"/v1/agreements/{agreement['id']}/revoke", token=msp.token)
        )

        async def revocation_settled() -> bool:
            return revoking.done() or await waiting() >= 2

        await wait_for(revocation_settled, message="the revocation neither ended nor waited")
    published, revoked = await asyncio.gather(publishing, revoking)

    assert revoked.expect(200)["status"] == "revoked"
    assert published.status in (200, 422), published.body
    if published.status == 200:
        await _eventually_unorderable(catalog, draft["id"])


async def test_a_revocation_racing_a_new_version_still_stops_orders(catalog: Catalog) -> None:
    """The revocation holds the agreement while the owner publishes a new version using it."""
    owner = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    agreement = await catalog.grant(msp, owner)
    published = await catalog.publish_new(
        owner, components=[catalog.component(owner), catalog.component(msp, agreement=agreement)]
    )
    async with holding(catalog, "outbox") as waiting:
        revoking = asyncio.create_task(
            catalog.call("POST", f"/v1/agreements/{agreement['id']}/revoke", token=msp.token)
        )
        await wait_for(waiting, message="the revocation never reached the outbox")
        patching = asyncio.create_task(
            catalog.call(
                "PATCH",
                f"/v1/offerings/{published['id']}",
                token=owner.token,
                body={"description": "changed while the agreement ends"},
            )
        )

        async def change_settled() -> bool:
            return patching.done() or await waiting() >= 2

        await wait_for(change_settled, message="the change neither ended nor waited")
    revoked, patched = await asyncio.gather(revoking, patching)

    # Neither request may fail for the other (a deadlock would be a 500 here).
    assert revoked.expect(200)["status"] == "revoked"
    assert patched.status in (200, 422), patched.body
    await _eventually_unorderable(catalog, published["id"])


async def test_an_expiry_racing_a_publish_still_stops_orders(catalog: Catalog) -> None:
    """The publish read the agreement just before it expired and commits after the sweep ran."""
    owner = await catalog.onboard_partner("isv")
    integrator = await catalog.onboard_partner("integrator")
    agreement = await catalog.grant(
        integrator, owner, expires_at=datetime.now(UTC) + timedelta(seconds=2)
    )
    draft = await catalog.create_offering(
        owner, components=[catalog.component(integrator, agreement=agreement)]
    )
    async with holding(catalog, "offering_versions") as waiting, catalog.database() as conn:
        publishing = asyncio.create_task(
            catalog.call("POST", f"/v1/offerings/{draft['id']}/publish", token=owner.token)
        )
        await wait_for(waiting, message="the publish never reached offering_versions")

        async def sweep_settled() -> bool:
            status = await conn.fetchval(
                "SELECT status FROM agreements WHERE id = $1", agreement["id"]
            )
            return status == "expired" or await waiting() >= 2

        await wait_for(sweep_settled, message="the expiry sweep neither ended nor waited")
    published = await publishing

    assert published.status in (200, 422), published.body
    if published.status == 200:
        await _eventually_unorderable(catalog, draft["id"])
