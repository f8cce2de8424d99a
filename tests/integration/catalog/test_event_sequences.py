"""Agreement and account events carry their entity's sequence number: 1, 2, 3 ... per key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.catalog import handlers
from shared import db
from shared.contracts import catalog_accounts, catalog_agreements
from shared.timers import TimerLoop
from tests.integration.catalog.conftest import Catalog, TopicEvent
from tests.support.clock import MovableClock


def sequences_by_key(events: list[TopicEvent], keys: set[str]) -> dict[str, list[int | None]]:
    found: dict[str, list[int | None]] = {key: [] for key in keys}
    for event in events:
        if event.key in keys:
            found[event.key].append(event.envelope.sequence)
    return found


async def test_account_events_are_numbered_per_account(catalog: Catalog) -> None:
    partner = await catalog.onboard_partner("isv")
    customer = await catalog.sign_up_customer()
    for _ in range(2):
        rotated = await catalog.call(
            "POST", f"/v1/partners/{partner.id}/rotate-token", token=catalog.operator_token
        )
        rotated.expect(200)
    rotated = await catalog.call(
        "POST", f"/v1/customers/{customer.id}/rotate-token", token=catalog.operator_token
    )
    rotated.expect(200)

    keys = {partner.id, customer.id}
    expected = {partner.id: [1, 2, 3], customer.id: [1, 2]}
    await catalog.wait_for_events(
        catalog_accounts.TOPIC,
        lambda read: sequences_by_key(read, keys) == expected,
        message="account events are not numbered 1, 2, 3 per account",
    )


async def test_agreement_events_are_numbered_per_agreement_whichever_path_ends_it(
    catalog: Catalog,
) -> None:
    isv = await catalog.onboard_partner("isv")
    msp = await catalog.onboard_partner("managed_service")
    revoked = await catalog.grant(isv, msp)
    revoking = await catalog.call("POST", f"/v1/agreements/{revoked['id']}/revoke", token=isv.token)
    revoking.expect(200)
    soon = datetime.now(UTC) + timedelta(hours=1)
    expiring = await catalog.grant(isv, msp, expires_at=soon)
    clock = MovableClock(soon + timedelta(seconds=1))
    pool = await db.create_pool(catalog.database_url, min_size=1, max_size=2)
    try:
        assert await TimerLoop(pool, handlers.timer_handlers(clock), clock=clock).fire_due() == 1
    finally:
        await pool.close()

    keys = {revoked["id"], expiring["id"]}
    await catalog.wait_for_events(
        catalog_agreements.TOPIC,
        lambda read: sequences_by_key(read, keys) == {key: [1, 2] for key in keys},
        message="agreement events are not numbered 1, 2 per agreement",
    )
