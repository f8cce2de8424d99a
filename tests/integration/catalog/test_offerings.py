"""Offerings: drafts, publishing, immutable versions, retiring, validation and tenancy."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from shared.money import MAX_AMOUNT
from tests.integration.catalog.conftest import Catalog, as_outsider_sees


async def test_a_partner_creates_a_draft_offering(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner("isv")
    body = catalog.offering_body(
        owner,
        name="Ledger Cloud",
        description="Double-entry books",
        currency="EUR",
        components=[
            catalog.component(
                owner,
                name="Seat",
                pricing={"model": "subscription", "unit_amount": 4_900, "interval": "month"},
            ),
            catalog.component(
                owner,
                name="Storage",
                pricing={"model": "usage", "unit_amount": 2, "unit": "GB-hour"},
            ),
        ],
    )
    reply = await catalog.call("POST", "/v1/offerings", token=owner.token, body=body)
    created = reply.expect(201)
    assert created["id"].startswith("off_")
    assert created["owner_id"] == owner.id
    assert (created["version"], created["status"], created["orderable"]) == (1, "draft", False)
    assert (created["name"], created["description"], created["currency"]) == (
        "Ledger Cloud",
        "Double-entry books",
        "EUR",
    )
    assert created["published_at"] is None
    assert datetime.fromisoformat(created["created_at"]).tzinfo is not None
    assert created["components"] == [
        {
            "partner_id": owner.id,
            "partner_kind": "isv",
            "role": "isv",
            "name": "Seat",
            "pricing": {"model": "subscription", "unit_amount": 4_900, "interval": "month"},
            "agreement_id": None,
            "share_bps": 10_000,
        },
        {
            "partner_id": owner.id,
            "partner_kind": "isv",
            "role": "isv",
            "name": "Storage",
            "pricing": {"model": "usage", "unit_amount": 2, "unit": "GB-hour"},
            "agreement_id": None,
            "share_bps": 10_000,
        },
    ]
    assert (await catalog.offering(created["id"], owner.token)) == created


async def test_a_co_sold_component_carries_its_partner_and_agreed_share(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner("managed_service")
    isv = await catalog.onboard_partner("isv")
    agreement = await catalog.grant(isv, owner, share_bps=6_500)
    created = await catalog.create_offering(
        owner,
        components=[
            catalog.component(owner, name="Operations"),
            catalog.component(isv, agreement=agreement, name="Licence"),
        ],
    )
    operations, licence = created["components"]
    assert (operations["partner_id"], operations["share_bps"]) == (owner.id, 10_000)
    assert licence["partner_id"] == isv.id
    assert licence["partner_kind"] == "isv"
    assert licence["agreement_id"] == agreement["id"]
    assert licence["share_bps"] == 6_500


async def test_a_draft_is_visible_to_its_owner_only(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    other = await catalog.onboard_partner()
    customer = await catalog.sign_up_customer()
    draft = await catalog.create_offering(owner)
    path = f"/v1/offerings/{draft['id']}"
    assert (await catalog.call("GET", path, token=owner.token)).status == 200
    assert (await catalog.call("GET", path, token=catalog.operator_token)).status == 200
    for token in (other.token, customer.token):
        assert (await catalog.call("GET", path, token=token)).status == 404
        assert (await catalog.call("GET", f"{path}/versions/1", token=token)).status == 404
    assert (await catalog.call("GET", path)).status == 401


async def test_patching_a_draft_changes_it_in_place(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    draft = await catalog.create_offering(owner, description="First words")
    reply = await catalog.call(
        "PATCH", f"/v1/offerings/{draft['id']}", token=owner.token, body={"name": "Better name"}
    )
    patched = reply.expect(200)
    assert (patched["version"], patched["status"]) == (1, "draft")
    assert patched["name"] == "Better name"
    assert patched["description"] == "First words"
    assert patched["components"] == draft["components"]
    assert datetime.fromisoformat(patched["changed_at"]) > datetime.fromisoformat(
        draft["changed_at"]
    )
    assert (await catalog.offering(draft["id"], owner.token)) == patched


async def test_publishing_makes_an_offering_orderable_and_public(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    other = await catalog.onboard_partner()
    customer = await catalog.sign_up_customer()
    draft = await catalog.create_offering(owner)
    published = await catalog.publish(owner, draft["id"])
    assert (published["status"], published["version"], published["orderable"]) == (
        "published",
        1,
        True,
    )
    assert published["unorderable_reason"] is None
    assert published["published_at"] is not None
    for token in (other.token, customer.token):
        assert (await catalog.offering(draft["id"], token)) == as_outsider_sees(published)
    # Publishing again is harmless and changes nothing.
    assert (await catalog.publish(owner, draft["id"])) == published


async def test_patching_a_published_offering_publishes_a_new_version(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    customer = await catalog.sign_up_customer()
    first = await catalog.publish_new(owner, name="Version one")
    path = f"/v1/offerings/{first['id']}"

    second = (
        await catalog.call(
            "PATCH",
            path,
            token=owner.token,
            body={
                "name": "Version two",
                "components": [
                    catalog.component(owner, pricing={"model": "one_time", "unit_amount": 500})
                ],
            },
        )
    ).expect(200)
    assert (second["version"], second["status"], second["orderable"]) == (2, "published", True)
    assert second["name"] == "Version two"
    assert second["created_at"] == first["created_at"]
    third = (
        await catalog.call("PATCH", path, token=owner.token, body={"description": "v3"})
    ).expect(200)
    assert third["version"] == 3
    assert (third["name"], third["description"]) == ("Version two", "v3")

    assert (await catalog.offering(first["id"], customer.token)) == as_outsider_sees(third)
    old = (await catalog.call("GET", f"{path}/versions/1", token=customer.token)).expect(200)
    assert old["version"] == 1
    assert old["name"] == "Version one"
    assert old["components"] == as_outsider_sees(first)["components"]
    assert old["published_at"] == first["published_at"]
    middle = (await catalog.call("GET", f"{path}/versions/2", token=customer.token)).expect(200)
    assert (middle["name"], middle["description"]) == ("Version two", first["description"])
    assert middle["components"][0]["pricing"]["unit_amount"] == 500
    current = (await catalog.call("GET", f"{path}/versions/3", token=customer.token)).expect(200)
    assert current == as_outsider_sees(third)
    # Non-ASCII digits too: "²" (superscript two) and "\u0661" (Arabic-Indic one).
    for missing in ("4", "0", "-1", "abc", "9999999999", "1.0", "+1", "\u00b2", "\u0661"):
        reply = await catalog.call("GET", f"{path}/versions/{missing}", token=customer.token)
        assert reply.status == 404, missing


async def test_a_published_change_is_checked_like_a_new_offering(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    msp = await catalog.onboard_partner("managed_service")
    published = await catalog.publish_new(owner)
    path = f"/v1/offerings/{published['id']}"
    reply = await catalog.call(
        "PATCH",
        path,
        token=owner.token,
        body={"currency": "XTS", "components": [catalog.component(msp)]},
    )
    assert reply.status == 422
    assert reply.fields == ["currency", "components[0].agreement_id"]
    assert (await catalog.offering(published["id"])) == published


async def test_retiring_stops_new_orders_for_good(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    published = await catalog.publish_new(owner)
    path = f"/v1/offerings/{published['id']}"
    retired = (await catalog.call("POST", f"{path}/retire", token=owner.token)).expect(200)
    assert (retired["status"], retired["orderable"], retired["version"]) == ("retired", False, 1)
    assert retired["unorderable_reason"] == "retired"
    assert (await catalog.call("POST", f"{path}/retire", token=owner.token)).expect(200) == retired
    assert (await catalog.call("POST", f"{path}/publish", token=owner.token)).status == 409
    patch = await catalog.call("PATCH", path, token=owner.token, body={"name": "Back again"})
    assert patch.status == 409
    customer = await catalog.sign_up_customer()
    assert (await catalog.offering(published["id"], customer.token)) == as_outsider_sees(retired)
    old = await catalog.call("GET", f"{path}/versions/1", token=customer.token)
    assert old.expect(200)["name"] == published["name"]


async def test_a_draft_cannot_be_retired(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    draft = await catalog.create_offering(owner)
    reply = await catalog.call("POST", f"/v1/offerings/{draft['id']}/retire", token=owner.token)
    assert reply.status == 409


# Validation: every rule answers 422 and names the field

Body = dict[str, Any]


def _set(path: str, value: Any) -> Callable[[Body], None]:
    """A change to a request body at a dotted path (``components.0.pricing.unit_amount``)."""

    def change(body: Body) -> None:
        *parents, last = path.split(".")
        target: Any = body
        for step in parents:
            target = target[int(step)] if step.isdigit() else target[step]
        if value is _DELETE:
            del target[last]
        elif last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value

    return change


_DELETE = object()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param(_set("currency", "XTS"), "currency", id="unsupported currency"),
        pytest.param(_set("currency", "usd"), "currency", id="malformed currency"),
        pytest.param(_set("currency", _DELETE), "currency", id="no currency"),
        pytest.param(
            _set("components.0.pricing.currency", "EUR"),
            "components[0].pricing.currency",
            id="a second currency on a price",
        ),
        pytest.param(
            _set("components.0.pricing.unit_amount", -1),
            "components[0].pricing.unit_amount",
            id="negative amount",
        ),
        pytest.param(
            _set("components.0.pricing.unit_amount", MAX_AMOUNT + 1),
            "components[0].pricing.unit_amount",
            id="absurd amount",
        ),
        pytest.param(
            _set("components.0.pricing.unit_amount", 2**70),
            "components[0].pricing.unit_amount",
            id="amount beyond 64 bits",
        ),
        pytest.param(
            _set("components.0.pricing.unit_amount", 9.99),
            "components[0].pricing.unit_amount",
            id="float amount",
        ),
        pytest.param(
            _set("components.0.pricing.unit_amount", "100"),
            "components[0].pricing.unit_amount",
            id="amount as text",
        ),
        pytest.param(
            _set("components.0.pricing", {"model": "barter", "unit_amount": 1}),
            "components[0].pricing.model",
            id="unknown pricing model",
        ),
        pytest.param(
            _set(
                "components.0.pricing",
                {"model": "subscription", "unit_amount": 1, "interval": "week"},
            ),
            "components[0].pricing.interval",
            id="unknown interval",
        ),
        pytest.param(
            _set("components.0.pricing", {"model": "usage", "unit_amount": 1}),
            "components[0].pricing.unit",
            id="usage without unit",
        ),
        pytest.param(_set("components", []), "components", id="no components"),
        pytest.param(_set("components", _DELETE), "components", id="components missing"),
        pytest.param(_set("name", "n" * 201), "name", id="over-long name"),
        pytest.param(_set("name", ""), "name", id="empty name"),
        pytest.param(_set("description", "d" * 5_001), "description", id="over-long description"),
        pytest.param(_set("components.0.name", "c" * 201), "components[0].name", id="long part"),
        pytest.param(_set("components.0.role", "vendor"), "components[0].role", id="bad role"),
        pytest.param(
            _set("components.0.partner_id", "ptn_00000000000000000000000000"),
            "components[0].partner_id",
            id="unknown partner",
        ),
        pytest.param(
            _set("components.0.partner_id", "someone"),
            "components[0].partner_id",
            id="malformed partner id",
        ),
        pytest.param(_set("owner_id", "ptn_00000000000000000000000000"), "owner_id", id="owner"),
    ],
)
async def test_an_invalid_offering_is_refused_naming_the_field(
    catalog: Catalog, change: Callable[[Body], None], field: str
) -> None:
    owner = await catalog.onboard_partner()
    body = catalog.offering_body(owner)
    change(body)
    reply = await catalog.call("POST", "/v1/offerings", token=owner.token, body=body)
    assert reply.status == 422, reply.body
    assert reply.fields == [field]
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert reply.body["status"] == 422


async def test_the_largest_allowed_amount_is_accepted(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    created = await catalog.create_offering(
        owner,
        components=[catalog.component(owner, pricing={"model": "one_time", "unit_amount": 0})]
        + [
            catalog.component(owner, pricing={"model": "one_time", "unit_amount": MAX_AMOUNT})
            for _ in range(19)
        ],
    )
    assert [c["pricing"]["unit_amount"] for c in created["components"]] == [0] + [MAX_AMOUNT] * 19


async def test_at_most_twenty_components(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    body = catalog.offering_body(owner, components=[catalog.component(owner)] * 21)
    reply = await catalog.call("POST", "/v1/offerings", token=owner.token, body=body)
    assert reply.status == 422
    assert reply.fields == ["components"]


async def test_another_partners_component_needs_an_agreement(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    integrator = await catalog.onboard_partner("integrator")
    from_integrator = await catalog.grant(integrator, owner)
    to_someone_else = await catalog.grant(msp, integrator)
    cases: list[tuple[dict[str, Any], str]] = [
        (catalog.component(msp), "needs its agreement"),
        (catalog.component(msp, agreement=from_integrator), "no agreement"),
        (catalog.component(msp, agreement=to_someone_else), "no agreement"),
        (
            catalog.component(integrator, agreement=from_integrator, role="reseller"),
            "covers the role",
        ),
    ]
    for component, says in cases:
        body = catalog.offering_body(owner, components=[catalog.component(owner), component])
        reply = await catalog.call("POST", "/v1/offerings", token=owner.token, body=body)
        assert reply.status == 422, reply.body
        field = "components[1].role" if says == "covers the role" else "components[1].agreement_id"
        assert reply.fields == [field]
        assert says in reply.body["errors"][0]["message"]
    own_with_agreement = catalog.component(owner, agreement=from_integrator)
    body = catalog.offering_body(owner, components=[own_with_agreement])
    reply = await catalog.call("POST", "/v1/offerings", token=owner.token, body=body)
    assert reply.fields == ["components[0].agreement_id"]


async def test_several_broken_rules_are_reported_together(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    msp = await catalog.onboard_partner("managed_service")
    body = catalog.offering_body(
        owner,
        currency="XTS",
        components=[
            catalog.component(owner),
            {**catalog.component(owner), "partner_id": "ptn_00000000000000000000000000"},
            catalog.component(msp),
        ],
    )
    reply = await catalog.call("POST", "/v1/offerings", token=owner.token, body=body)
    assert reply.status == 422
    assert reply.fields == ["currency", "components[1].partner_id", "components[2].agreement_id"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"currency": "XTS"}, "currency"),
        ({"components": []}, "components"),
        ({"name": None}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"status": "published"}, "status"),
        ({"components": [{"partner_id": "ptn_00000000000000000000000000"}]}, "components[0].role"),
    ],
)
async def test_an_invalid_patch_is_refused_and_changes_nothing(
    catalog: Catalog, patch: dict[str, Any], field: str
) -> None:
    owner = await catalog.onboard_partner()
    draft = await catalog.create_offering(owner)
    path = f"/v1/offerings/{draft['id']}"
    reply = await catalog.call("PATCH", path, token=owner.token, body=patch)
    assert reply.status == 422, reply.body
    assert reply.fields == [field]
    assert (await catalog.offering(draft["id"], owner.token)) == draft


async def test_malformed_offering_json_is_a_bad_request(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    draft = await catalog.create_offering(owner)
    for method, path in (
        ("POST", "/v1/offerings"),
        ("PATCH", f"/v1/offerings/{draft['id']}"),
    ):
        reply = await catalog.call(method, path, token=owner.token, raw=b'{"name": "x",')
        assert reply.status == 400, reply.body


# Tenancy


async def test_another_partner_cannot_touch_a_draft_it_cannot_see(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    intruder = await catalog.onboard_partner()
    draft = await catalog.create_offering(owner)
    path = f"/v1/offerings/{draft['id']}"
    attempts = [
        await catalog.call("PATCH", path, token=intruder.token, body={"name": "Mine now"}),
        await catalog.call("POST", f"{path}/publish", token=intruder.token),
        await catalog.call("POST", f"{path}/retire", token=intruder.token),
    ]
    assert [a.status for a in attempts] == [404, 404, 404]
    assert (await catalog.offering(draft["id"], owner.token)) == draft


async def test_another_partner_can_see_but_not_change_a_published_offering(
    catalog: Catalog,
) -> None:
    owner = await catalog.onboard_partner()
    intruder = await catalog.onboard_partner()
    published = await catalog.publish_new(owner)
    path = f"/v1/offerings/{published['id']}"
    attempts = [
        await catalog.call("PATCH", path, token=intruder.token, body={"name": "Mine now"}),
        await catalog.call("POST", f"{path}/publish", token=intruder.token),
        await catalog.call("POST", f"{path}/retire", token=intruder.token),
    ]
    # The offering is public, so its existence is no secret: the refusal is 403, not 404.
    assert [a.status for a in attempts] == [403, 403, 403]
    assert (await catalog.offering(published["id"], intruder.token)) == as_outsider_sees(published)


async def test_only_partners_make_and_change_offerings(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    customer = await catalog.sign_up_customer()
    published = await catalog.publish_new(owner)
    path = f"/v1/offerings/{published['id']}"
    body = catalog.offering_body(owner)
    for token in (customer.token, catalog.operator_token):
        assert (await catalog.call("POST", "/v1/offerings", token=token, body=body)).status == 403
        patch = await catalog.call("PATCH", path, token=token, body={"name": "x"})
        assert patch.status == 403
        assert (await catalog.call("POST", f"{path}/retire", token=token)).status == 403
    assert (await catalog.call("POST", "/v1/offerings", body=body)).status == 401


async def test_an_unknown_offering_is_not_found(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    for offering_id in ("off_00000000000000000000000000", "not-an-id"):
        path = f"/v1/offerings/{offering_id}"
        assert (await catalog.call("GET", path, token=owner.token)).status == 404
        assert (await catalog.call("GET", f"{path}/versions/1", token=owner.token)).status == 404
        patch = await catalog.call("PATCH", path, token=owner.token, body={"name": "x"})
        assert patch.status == 404
        assert (await catalog.call("POST", f"{path}/publish", token=owner.token)).status == 404
        assert (await catalog.call("POST", f"{path}/retire", token=owner.token)).status == 404
