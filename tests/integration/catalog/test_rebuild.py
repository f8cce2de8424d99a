"""Another service can rebuild the whole published catalog from the offerings topic alone.

This module has the service (and its database) to itself, so "everything the
database holds" is exactly what this test made.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.contracts import catalog_offerings
from shared.contracts.catalog_offerings import (
    OfferingOrderabilityChanged,
    OfferingPublished,
    OfferingRetired,
    OfferingState,
)
from tests.integration.catalog.conftest import Catalog, TopicEvent

# The fields an event carries, as GET /v1/offerings/{id} names them.
_FIELDS = (
    "owner_id",
    "version",
    "status",
    "orderable",
    "unorderable_reason",
    "name",
    "description",
    "currency",
    "components",
    "published_at",
    "changed_at",
)


def as_view(state: OfferingState) -> dict[str, Any]:
    """An event's offering state in the shape the HTTP API uses."""
    document: dict[str, Any] = msgspec.to_builtins(state)
    return {"id": document["offering_id"], **{field: document[field] for field in _FIELDS}}


def rebuild(events: list[TopicEvent]) -> dict[str, OfferingState]:
    """What a consumer keeps: the last event of each key wins (as after compaction)."""
    catalog: dict[str, OfferingState] = {}
    for record in events:
        assert isinstance(
            record.event, OfferingPublished | OfferingRetired | OfferingOrderabilityChanged
        )
        assert record.key == record.event.offering.offering_id
        catalog[record.key] = record.event.offering
    return catalog


async def test_the_published_catalog_can_be_rebuilt_from_the_offerings_topic(
    catalog: Catalog,
) -> None:
    isv = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    integrator = await catalog.onboard_partner("integrator")
    from_msp = await catalog.grant(msp, isv, share_bps=2_000)
    from_integrator = await catalog.grant(integrator, isv, share_bps=500)
    to_msp = await catalog.grant(isv, msp, share_bps=8_000)

    plain = [await catalog.publish_new(isv, name=f"Plain {n}") for n in range(4)]
    co_sold = await catalog.publish_new(
        isv,
        name="Managed suite",
        components=[
            catalog.component(isv, name="Licence"),
            catalog.component(
                msp,
                agreement=from_msp,
                name="Operations",
                pricing={"model": "subscription", "unit_amount": 12_000, "interval": "year"},
            ),
        ],
    )
    soon_unorderable = await catalog.publish_new(
        isv,
        name="Integrated suite",
        components=[
            catalog.component(isv),
            catalog.component(
                integrator,
                agreement=from_integrator,
                pricing={"model": "usage", "unit_amount": 7, "unit": "GB-hour"},
            ),
        ],
    )
    msp_offering = await catalog.publish_new(
        msp,
        name="Run by the MSP",
        components=[catalog.component(msp), catalog.component(isv, agreement=to_msp)],
    )
    never_published = await catalog.create_offering(isv, name="Still a draft")

    # Changes after publishing: new versions, a retirement, a revoked agreement.
    for patch in ({"name": "Plain 0, second edition"}, {"description": "third edition"}):
        reply = await catalog.call(
            "PATCH", f"/v1/offerings/{plain[0]['id']}", token=isv.token, body=patch
        )
        reply.expect(200)
    reply = await catalog.call(
        "PATCH",
        f"/v1/offerings/{co_sold['id']}",
        token=isv.token,
        body={"currency": "EUR"},
    )
    assert reply.expect(200)["version"] == 2
    await catalog.call("POST", f"/v1/offerings/{plain[1]['id']}/retire", token=isv.token)
    await catalog.call(
        "POST", f"/v1/agreements/{from_integrator['id']}/revoke", token=integrator.token
    )
    draft_then_published = await catalog.create_offering(isv, name="Late")
    await catalog.call(
        "PATCH", f"/v1/offerings/{draft_then_published['id']}", token=isv.token, body={"name": "x"}
    )
    await catalog.publish(isv, draft_then_published["id"])

    async with catalog.database() as conn:
        expected_events = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE topic = $1", catalog_offerings.TOPIC.name
        )
        published_in_db = {
            row["id"]
            for row in await conn.fetch("SELECT id FROM offerings WHERE status = 'published'")
        }
        all_rows = {
            row["id"]: row
            for row in await conn.fetch(
                "SELECT id, status, version, name, description, currency, components::text,"
                " orderable, unorderable_reason, published_at, changed_at FROM offerings"
            )
        }

    events = await catalog.wait_for_events(
        catalog_offerings.TOPIC,
        lambda read: len({e.envelope.event_id for e in read}) >= expected_events,
        message="the offerings topic did not receive every event of the outbox",
    )
    rebuilt = rebuild(events)

    # The same set: every published offering, nothing else published, no draft at all.
    assert {key for key, state in rebuilt.items() if state.status == "published"} == (
        published_in_db
    )
    assert never_published["id"] not in rebuilt
    assert set(rebuilt) == {k for k, row in all_rows.items() if row["status"] != "draft"}
    assert len(published_in_db) == 7

    # Field by field, as the API serves it and as the database stores it.
    for offering_id, state in rebuilt.items():
        served = await catalog.offering(offering_id)
        assert as_view(state) == {k: served[k] for k in ("id", *_FIELDS)}, offering_id
        row = all_rows[offering_id]
        assert (state.status, state.version, state.name, state.description, state.currency) == (
            row["status"],
            row["version"],
            row["name"],
            row["description"],
            row["currency"],
        )
        assert (state.orderable, state.unorderable_reason) == (
            row["orderable"],
            row["unorderable_reason"],
        )
        assert (state.published_at, state.changed_at) == (row["published_at"], row["changed_at"])
        assert msgspec.json.decode(row["components"]) == msgspec.to_builtins(state.components)

    # The states the cases above should have reached.
    assert rebuilt[plain[0]["id"]].version == 3
    assert rebuilt[plain[0]["id"]].name == "Plain 0, second edition"
    assert rebuilt[plain[1]["id"]].status == "retired"
    assert rebuilt[co_sold["id"]].currency == "EUR"
    assert [c.share_bps for c in rebuilt[co_sold["id"]].components] == [10_000, 2_000]
    assert rebuilt[soon_unorderable["id"]].orderable is False
    assert rebuilt[msp_offering["id"]].components[1].share_bps == 8_000
    assert rebuilt[draft_then_published["id"]].name == "x"

    # Every published version is on the topic too, as the versions endpoint keeps it.
    for record in events:
        if not isinstance(record.event, OfferingPublished):
            continue
        state = record.event.offering
        reply = await catalog.call(
            "GET",
            f"/v1/offerings/{state.offering_id}/versions/{state.version}",
            token=catalog.operator_token,
        )
        kept = reply.expect(200)
        for field in ("name", "description", "currency", "components", "published_at"):
            assert kept[field] == as_view(state)[field], (state.offering_id, state.version)
