"""Items 7 and 8: co-sell terms stay between the parties, and so does their existence."""

from __future__ import annotations

from tests.integration.catalog.conftest import Catalog

TERMS = ("agreement_id", "share_bps")


async def test_only_the_parties_and_the_operator_see_a_components_terms(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    stranger = await catalog.onboard_partner("integrator")
    customer = await catalog.sign_up_customer()
    agreement = await catalog.grant(msp, owner, share_bps=3_300)
    offering = await catalog.publish_new(
        owner,
        components=[catalog.component(owner), catalog.component(msp, agreement=agreement)],
    )
    path = f"/v1/offerings/{offering['id']}"

    async def seen_by(token: str) -> list[dict[str, object]]:
        reply = await catalog.call("GET", path, token=token)
        components: list[dict[str, object]] = reply.expect(200)["components"]
        return components

    for party in (owner.token, msp.token, catalog.operator_token):
        components = await seen_by(party)
        assert components[1]["agreement_id"] == agreement["id"]
        assert components[1]["share_bps"] == 3_300
    for outsider in (customer.token, stranger.token):
        for component in await seen_by(outsider):
            assert not set(TERMS) & set(component), component
        assert (
            await catalog.call("GET", f"/v1/agreements/{agreement['id']}", token=outsider)
        ).status == 404
    browsed = await catalog.call(
        "GET", "/v1/offerings", token=customer.token, params={"partner_id": owner.id}
    )
    for item in browsed.expect(200)["items"]:
        for component in item["components"]:
            assert not set(TERMS) & set(component), component


async def test_a_missing_agreement_and_someone_elses_read_the_same(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    other = await catalog.onboard_partner("integrator")
    between_others = await catalog.grant(msp, other)
    missing_id = "agr_" + "0" * 26

    async def refusal(agreement_id: str) -> str:
        component = catalog.component(msp)
        component["agreement_id"] = agreement_id
        body = catalog.offering_body(owner, components=[catalog.component(owner), component])
        reply = await catalog.call("POST", "/v1/offerings", token=owner.token, body=body)
        assert reply.status == 422
        assert reply.fields == ["components[1].agreement_id"]
        message: str = reply.body["errors"][0]["message"]
        return message.replace(agreement_id, "<id>")

    assert await refusal(between_others["id"]) == await refusal(missing_id)
