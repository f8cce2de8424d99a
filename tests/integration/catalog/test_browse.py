"""Browsing and searching published offerings: text, partner and kind filters, cursors."""

from __future__ import annotations

import asyncio
import random
import string
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest

from shared.http.pagination import encode_cursor
from tests.integration.catalog.conftest import Account, Catalog, as_outsider_sees


def word() -> str:
    """A made-up word only the offerings of one test contain."""
    return "".join(random.choices(string.ascii_lowercase, k=14))


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


async def browse(catalog: Catalog, token: str, **params: str | int) -> dict[str, Any]:
    reply = await catalog.call("GET", "/v1/offerings", token=token, params=params)
    page: dict[str, Any] = reply.expect(200)
    return page


async def browse_all(
    catalog: Catalog,
    token: str,
    params: Mapping[str, str | int],
    *,
    limit: int,
    between_pages: Callable[[], Awaitable[None]] | None = None,
) -> list[dict[str, Any]]:
    """Follow ``next_cursor`` to the end; ``between_pages`` runs before each next page."""
    items: list[dict[str, Any]] = []
    page = await browse(catalog, token, limit=limit, **params)
    while True:
        assert len(page["items"]) <= limit
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        if between_pages is not None:
            await between_pages()
        page = await browse(catalog, token, limit=limit, cursor=page["next_cursor"], **params)


async def test_search_matches_words_and_ranks_name_matches_first(catalog: Catalog) -> None:
    term = word()
    owner = await catalog.onboard_partner()
    other = await catalog.onboard_partner()
    customer = await catalog.sign_up_customer()
    # Made first, so it has the older id: only its rank can put it first.
    in_name = await catalog.publish_new(owner, name=f"Cloud {term} backup")
    in_description = await catalog.publish_new(
        other, name="Plain backup", description=f"Built on {term} and love"
    )
    await catalog.publish_new(owner, name="Nothing alike", description="Just storage")
    await catalog.create_offering(owner, name=f"{term} draft of the owner")
    await catalog.create_offering(other, name=f"{term} draft of another")
    retired = await catalog.publish_new(owner, name=f"{term} retired")
    await catalog.call("POST", f"/v1/offerings/{retired['id']}/retire", token=owner.token)

    for token in (customer.token, owner.token, other.token, catalog.operator_token):
        page = await browse(catalog, token, q=term)
        assert ids(page["items"]) == [in_name["id"], in_description["id"]]
        assert page["next_cursor"] is None
    page = await browse(catalog, customer.token, q=term)
    assert page["items"][0] == as_outsider_sees(await catalog.offering(in_name["id"]))

    both_words = await browse(catalog, customer.token, q=f"{term} backup")
    assert ids(both_words["items"]) == [in_name["id"], in_description["id"]]
    stemmed = await browse(catalog, customer.token, q=f"{term} backups")
    assert ids(stemmed["items"]) == [in_name["id"], in_description["id"]]
    excluded = await browse(catalog, customer.token, q=f"{term} -cloud")
    assert ids(excluded["items"]) == [in_description["id"]]
    assert (await browse(catalog, customer.token, q=f"{term} zebra"))["items"] == []


async def test_browse_filters_by_partner_and_by_partner_kind(catalog: Catalog) -> None:
    term = word()
    isv = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    agreement = await catalog.grant(msp, isv)
    co_sold = await catalog.publish_new(
        isv,
        name=f"{term} managed",
        components=[catalog.component(isv), catalog.component(msp, agreement=agreement)],
    )
    solo = await catalog.publish_new(isv, name=f"{term} solo")
    run_by_msp = await catalog.publish_new(msp, name=f"{term} operations")
    await catalog.create_offering(msp, name=f"{term} draft")

    async def found(**params: str) -> set[str]:
        return set(ids((await browse(catalog, isv.token, **params))["items"]))

    assert await found(partner_id=msp.id) == {co_sold["id"], run_by_msp["id"]}
    assert await found(partner_id=isv.id) == {co_sold["id"], solo["id"]}
    assert await found(q=term, kind="managed_service") == {co_sold["id"], run_by_msp["id"]}
    assert await found(q=term, kind="isv") == {co_sold["id"], solo["id"]}
    assert await found(q=term, kind="integrator") == set()
    assert await found(partner_id=isv.id, kind="managed_service") == {co_sold["id"]}
    unknown = await found(partner_id="ptn_00000000000000000000000000")
    assert unknown == set()


async def test_unorderable_offerings_stay_listed_and_say_so(catalog: Catalog) -> None:
    isv = await catalog.onboard_partner("isv")
    integrator = await catalog.onboard_partner("integrator")
    agreement = await catalog.grant(integrator, isv)
    offering = await catalog.publish_new(
        isv, components=[catalog.component(integrator, agreement=agreement)]
    )
    await catalog.call("POST", f"/v1/agreements/{agreement['id']}/revoke", token=integrator.token)
    (listed,) = (await browse(catalog, isv.token, partner_id=isv.id))["items"]
    assert listed["id"] == offering["id"]
    assert listed["orderable"] is False


async def _publish_many(catalog: Catalog, owner: Account, term: str, count: int) -> list[str]:
    published = []
    for n in range(count):
        # Two rank tiers for a text search: the word in the name or in the description.
        if n % 2:
            offering = await catalog.publish_new(owner, name=f"{term} number {n}")
        else:
            offering = await catalog.publish_new(
                owner, name=f"Number {n}", description=f"About {term}"
            )
        published.append(offering["id"])
    return published


@pytest.mark.parametrize("search", [False, True], ids=["newest first", "text search"])
async def test_paging_visits_every_offering_once_while_others_are_published(
    catalog: Catalog, search: bool
) -> None:
    term = word()
    owner = await catalog.onboard_partner()
    # Drafts made before paging starts have older ids than anything paged so far.
    early_drafts = [
        (await catalog.create_offering(owner, name=f"{term} early draft {n}"))["id"]
        for n in range(3)
    ]
    before = await _publish_many(catalog, owner, term, 9)
    published_while_paging: list[str] = []

    async def publish_more() -> None:
        if early_drafts:
            published_while_paging.append((await catalog.publish(owner, early_drafts.pop()))["id"])
        published_while_paging.append(
            (await catalog.publish_new(owner, name=f"{term} late {len(published_while_paging)}"))[
                "id"
            ]
        )

    params: dict[str, str | int] = {"q": term} if search else {"partner_id": owner.id}
    seen = ids(await browse_all(catalog, owner.token, params, limit=2, between_pages=publish_more))

    counts = Counter(seen)
    assert [offering for offering, n in counts.items() if n > 1] == []
    assert set(before) <= set(seen)
    assert set(seen) <= set(before) | set(published_while_paging)
    assert published_while_paging  # the list really changed under the pages
    # Afterwards, a fresh walk finds everything published, exactly once.
    everything = ids(await browse_all(catalog, owner.token, params, limit=4))
    assert sorted(everything) == sorted(before + published_while_paging)


async def test_a_short_list_has_no_next_cursor_and_a_full_page_has_one(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    made = [(await catalog.publish_new(owner))["id"] for _ in range(3)]
    all_at_once = await browse(catalog, owner.token, partner_id=owner.id)
    assert sorted(ids(all_at_once["items"])) == sorted(made)
    assert all_at_once["next_cursor"] is None
    exact = await browse(catalog, owner.token, partner_id=owner.id, limit=3)
    assert exact["next_cursor"] is None
    first = await browse(catalog, owner.token, partner_id=owner.id, limit=2)
    assert isinstance(first["next_cursor"], str)
    rest = await browse(
        catalog, owner.token, partner_id=owner.id, limit=2, cursor=first["next_cursor"]
    )
    assert ids(first["items"] + rest["items"]) == ids(all_at_once["items"])
    assert rest["next_cursor"] is None


async def test_a_page_holds_fifty_by_default_and_up_to_five_hundred(catalog: Catalog) -> None:
    owner = await catalog.onboard_partner()
    made = await asyncio.gather(*(catalog.publish_new(owner) for _ in range(51)))
    by_default = await browse(catalog, owner.token, partner_id=owner.id)
    assert len(by_default["items"]) == 50
    assert by_default["next_cursor"] is not None
    rest = await browse(catalog, owner.token, partner_id=owner.id, cursor=by_default["next_cursor"])
    assert len(rest["items"]) == 1
    largest = await browse(catalog, owner.token, partner_id=owner.id, limit=500)
    assert sorted(ids(largest["items"])) == sorted(ids(list(made)))
    assert largest["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "not*a*cursor"}, "cursor"),
        ({"cursor": "bm9wZQ"}, "cursor"),
        ({"cursor": "WyJhIiwiYiJd"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"kind": "vendor"}, "kind"),
        ({"partner_id": "someone"}, "partner_id"),
        ({"q": "x" * 201}, "q"),
        ({"sort": "price"}, "sort"),
    ],
)
async def test_a_bad_browse_query_is_refused_naming_the_parameter(
    catalog: Catalog, params: dict[str, str | int], field: str
) -> None:
    customer = await catalog.sign_up_customer()
    reply = await catalog.call("GET", "/v1/offerings", token=customer.token, params=params)
    assert reply.status == 422, reply.body
    assert [f.removeprefix("query.") for f in reply.fields] == [field]


async def test_a_cursor_only_fits_the_list_it_came_from(catalog: Catalog) -> None:
    term = word()
    owner = await catalog.onboard_partner()
    await _publish_many(catalog, owner, term, 3)
    searched = await browse(catalog, owner.token, q=term, limit=1)
    plain = await browse(catalog, owner.token, partner_id=owner.id, limit=1)
    mixed = [
        {"cursor": searched["next_cursor"], "partner_id": owner.id},
        {"cursor": plain["next_cursor"], "q": term},
    ]
    for params in mixed:
        reply = await catalog.call("GET", "/v1/offerings", token=owner.token, params=params)
        assert reply.status == 422, reply.body
        assert [f.removeprefix("query.") for f in reply.fields] == ["cursor"]


@pytest.mark.parametrize(
    ("params", "position"),
    [
        ({}, ["\x00"]),
        ({"q": "anything"}, [0.5, "\x00"]),
        ({}, [True]),
        ({"q": "anything"}, ["0.5", "off_00000000000000000000000000"]),
    ],
    ids=["nul", "nul in a search", "not an id", "rank as text"],
)
async def test_a_forged_cursor_is_refused_naming_it(
    catalog: Catalog, params: dict[str, str], position: list[Any]
) -> None:
    customer = await catalog.sign_up_customer()
    reply = await catalog.call(
        "GET",
        "/v1/offerings",
        token=customer.token,
        params={**params, "cursor": encode_cursor(position)},
    )
    assert reply.status == 422, reply.body
    assert [f.removeprefix("query.") for f in reply.fields] == ["cursor"]


async def test_browsing_needs_a_token(catalog: Catalog) -> None:
    assert (await catalog.call("GET", "/v1/offerings")).status == 401
