"""Every service stands on the same door: the same edge cases against orders and a bare app.

The orders service (its composition as it ships, which today has no business
routes) shows the connection-level fixes; a minimal app built with the shared
``create_app`` and served by the shared ``serve`` shows the route-level ones,
since every service's routes are declared the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
import pytest_asyncio

from deploy.local.infra import free_port
from shared import db
from shared.http.api import PUBLIC, Api, Call
from shared.http.app import create_app
from shared.http.fields import Limit, Name
from shared.http.rate_limit import RateLimit
from shared.migrations import PLUMBING_MIGRATIONS, migrate
from shared.runtime import serve
from shared.settings import Secret
from shared.tokens import Principal, TokenVerifier
from tests.security.conftest import (
    HEADER_TIMEOUT,
    LogRecorder,
    raw_exchange,
)
from tests.security.test_malformed_requests import (
    BAD_VERSION,
    OVERSIZED_HEADER,
    UNKNOWN_METHOD,
    _malformed_authorization,
    head_and_body,
    status_of,
)
from tests.security.test_small_things import forged
from tests.support.infra import Infra, temporary_database
from tests.support.keys import TokenKeys
from tests.support.running import running_orders
from tests.support.waiting import wait_for


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def orders(infra: Infra, token_keys: TokenKeys) -> AsyncIterator[str]:
    async with (
        temporary_database(infra, "orders") as dsn,
        running_orders(
            infra, token_keys, dsn, http_header_timeout_seconds=HEADER_TIMEOUT
        ) as base_url,
    ):
        yield base_url


@pytest.mark.parametrize(
    "request_bytes",
    [OVERSIZED_HEADER, UNKNOWN_METHOD, BAD_VERSION],
    ids=["oversized header", "unknown method", "bad version"],
)
async def test_orders_answers_unparseable_requests_with_a_problem(
    orders: str, service_log: LogRecorder, request_bytes: bytes
) -> None:
    raw = await raw_exchange(orders, request_bytes)
    head, body = head_and_body(raw)
    assert b"application/problem+json" in head.encode(), head
    assert json.loads(body)["status"] == status_of(raw)
    assert "aiohttp" not in head.lower()
    assert not service_log.at(logging.ERROR)


async def test_orders_never_echoes_or_logs_a_token(
    orders: str, service_log: LogRecorder, token_keys: TokenKeys
) -> None:
    token = token_keys.operator_token
    for line in _malformed_authorization(token):
        raw = await raw_exchange(
            orders, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + line + b"Connection: close\r\n\r\n"
        )
        assert token.encode() not in raw
    assert token not in service_log.text()


async def test_orders_cuts_off_a_half_sent_request_head(orders: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(orders.rsplit(":", 1)[1]))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await writer.drain()
    try:
        ended = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT + 10)
    finally:
        writer.close()
    assert ended == b""  # closed by the server, well before a minute


# A bare app on the shared layer: one public POST and one authenticated GET.


class Thing(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name


class ThingCreated(msgspec.Struct, frozen=True):
    id: str
    name: str


class ListThings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    limit: Limit = 50


class ThingPage(msgspec.Struct, frozen=True):
    items: list[str]


@dataclass
class Bare:
    base_url: str
    pool: db.Pool
    committed_before_callback: list[bool]


def _bare_api(pool_ref: list[db.Pool], seen: list[bool]) -> Api:
    api = Api("bare")

    @api.route("POST", "/v1/things", summary="Make a thing", roles=PUBLIC, body=Thing,
               response=ThingCreated, status=201)  # fmt: skip
    async def make_thing(call: Call[Thing, None]) -> ThingCreated:
        thing_id = uuid.uuid4().hex
        async with call.transaction() as conn:
            await conn.execute(
                "INSERT INTO things (id, name) VALUES ($1, $2)", thing_id, call.body.name
            )

        async def visible_elsewhere() -> None:
            found = await pool_ref[0].fetchval(
                "SELECT count(*) FROM things WHERE id = $1", thing_id
            )
            seen.append(found == 1)

        call.after_commit(visible_elsewhere)
        return ThingCreated(id=thing_id, name=call.body.name)

    @api.route("GET", "/v1/things", summary="List things", roles=frozenset({"customer"}),
               query=ListThings, response=ThingPage)  # fmt: skip
    async def list_things(call: Call[None, ListThings]) -> ThingPage:
        async with call.connection() as conn:
            rows = await conn.fetch("SELECT name FROM things LIMIT $1", call.query.limit)
        return ThingPage(items=[row["name"] for row in rows])

    return api


# A subject whose first token was rotated away (it leaked): generation 1 is superseded.
ROTATED = "cus_" + "r" * 26


async def _rotated_once(principal: Principal) -> bool:
    return principal.subject == ROTATED and principal.generation < 2


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bare(infra: Infra, token_keys: TokenKeys) -> AsyncIterator[Bare]:
    async with temporary_database(infra, "bare") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn, [("plumbing", PLUMBING_MIGRATIONS)])
            await conn.execute("CREATE TABLE things (id text PRIMARY KEY, name text NOT NULL)")
        finally:
            await conn.close()
        pool = await db.create_pool(dsn, min_size=1, max_size=5)
        seen: list[bool] = []
        options: dict[str, Any] = {
            "api": _bare_api([pool], seen),
            "pool": pool,
            "verifier": TokenVerifier(token_keys.public_pem, Secret(token_keys.operator_token)),
            "readiness": [],
            "revocations": _rotated_once,
        }
        options["public_rate_limit"] = RateLimit(per_minute=60, burst=3)
        options["principal_rate_limit"] = RateLimit(per_minute=60, burst=5, per="caller")
        app = create_app(**options)
        port = free_port()
        stop = asyncio.Event()
        serving = asyncio.create_task(serve(app, host="127.0.0.1", port=port, stop=stop))
        base_url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:

                async def up() -> bool:
                    async with session.get(base_url + "/healthz") as reply:
                        return reply.status == 200

                await wait_for(up, message="the bare app never answered",
                               ignore=(aiohttp.ClientConnectionError,))  # fmt: skip
            yield Bare(base_url, pool, seen)
        finally:
            stop.set()
            await serving
            await pool.close()


async def _post(
    bare: Bare, data: bytes, headers: dict[str, str] | None = None, source: str = "127.0.0.3"
) -> tuple[int, dict[str, Any], Any]:
    # Each test posts from its own loopback address, so the rate limit test counts alone.
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            bare.base_url + "/v1/things",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        ) as reply,
    ):
        text = await reply.read()
        return reply.status, (json.loads(text) if text else {}), reply.headers


async def test_the_bare_app_refuses_bad_bodies_with_4xx(bare: Bare) -> None:
    status, problem, _ = await _post(bare, b'{"name":"\xff"}', source="127.0.0.6")
    assert status == 400, problem
    status, problem, _ = await _post(bare, b'{"name":"\\u202eevil"}', source="127.0.0.6")
    assert status == 422
    assert problem["errors"][0]["field"] == "name"
    status, problem, _ = await _post(
        bare,
        b'{"name":"ok"}',
        {"Content-Type": "application/json; charset=latin-1"},
        source="127.0.0.7",
    )
    assert status == 415, problem


async def test_the_bare_app_wants_an_unguessable_key_on_its_public_post(bare: Bare) -> None:
    status, problem, _ = await _post(bare, b'{"name":"keyed"}', {"Idempotency-Key": "1"})
    assert status == 422
    assert problem["errors"][0]["field"] == "Idempotency-Key"


async def test_after_commit_work_sees_the_commit_also_under_an_idempotency_key(bare: Bare) -> None:
    bare.committed_before_callback.clear()
    for headers in ({}, {"Idempotency-Key": str(uuid.uuid4())}):
        status, created, _ = await _post(bare, b'{"name":"committed"}', headers, "127.0.0.4")
        assert status == 201, created
    assert bare.committed_before_callback == [True, True]


async def test_the_bare_app_limits_its_public_post(bare: Bare) -> None:
    statuses = [(await _post(bare, b'{"name":"many"}', source="127.0.0.5"))[0] for _ in range(5)]
    assert statuses[:3] == [201, 201, 201]
    assert 429 in statuses[3:], statuses


async def test_the_bare_app_reads_counts_in_digits_and_refuses_odd_tokens(
    bare: Bare, token_keys: TokenKeys
) -> None:
    async with aiohttp.ClientSession() as session:
        token = forged(token_keys)
        auth = {"Authorization": f"Bearer {token}"}
        async with session.get(bare.base_url + "/v1/things?limit=1e2", headers=auth) as reply:
            assert reply.status == 422
        async with session.get(bare.base_url + "/v1/things?limit=2", headers=auth) as reply:
            assert reply.status == 200
            assert reply.headers.get("Cache-Control") == "no-store"
        async with session.head(bare.base_url + "/v1/things", headers=auth) as reply:
            assert reply.status == 200
        odd = {"Authorization": f"Bearer {forged(token_keys, sub='cus_a' + chr(0))}"}
        async with session.get(bare.base_url + "/v1/things", headers=odd) as reply:
            assert reply.status == 401


async def test_the_bare_app_limits_each_caller_and_only_that_caller(
    bare: Bare, token_keys: TokenKeys
) -> None:
    greedy = {"Authorization": f"Bearer {forged(token_keys, sub='cus_' + 'g' * 26)}"}
    modest = {"Authorization": f"Bearer {forged(token_keys, sub='cus_' + 'm' * 26)}"}
    operator = {"Authorization": f"Bearer {token_keys.operator_token}"}
    async with aiohttp.ClientSession() as session:

        async def status(headers: dict[str, str]) -> int:
            async with session.get(bare.base_url + "/v1/things", headers=headers) as reply:
                return reply.status

        # A burst of 5 per caller, then one a second.
        assert [await status(greedy) for _ in range(5)] == [200] * 5
        async with session.get(bare.base_url + "/v1/things", headers=greedy) as refused:
            assert refused.status == 429
            assert refused.headers["Content-Type"].startswith("application/problem+json")
            assert int(refused.headers["Retry-After"]) >= 1
            assert "per caller" in (await refused.json())["detail"]
        # Another caller, from the same address, is not held back by the first.
        assert await status(modest) == 200
        # The operator is not counted: it is refused this route, never throttled.
        assert {await status(operator) for _ in range(10)} == {403}


async def test_a_rotated_away_token_cannot_spend_the_fresh_tokens_rate_limit(
    bare: Bare, token_keys: TokenKeys
) -> None:
    # Whoever holds the leaked token keeps sending it after the rotation: each answer is
    # 401, then 429 once its bucket is empty; the rightful holder's new token is not
    # held back by that, or rotating would hand the thief a way to lock the tenant out.
    leaked = {"Authorization": f"Bearer {forged(token_keys, sub=ROTATED, gen=1)}"}
    fresh = {"Authorization": f"Bearer {forged(token_keys, sub=ROTATED, gen=2)}"}
    async with aiohttp.ClientSession() as session:

        async def status(headers: dict[str, str]) -> int:
            async with session.get(bare.base_url + "/v1/things", headers=headers) as reply:
                return reply.status

        refused = [await status(leaked) for _ in range(10)]
        assert refused[:5] == [401] * 5, refused
        assert set(refused) == {401, 429}, refused
        assert await status(fresh) == 200


async def test_orders_never_echoes_control_characters_of_a_malformed_id(
    orders: str, token_keys: TokenKeys
) -> None:
    # NUL and a right-to-left override in the path, as a client could send them.
    raw = await raw_exchange(
        orders,
        b"GET /v1/orders/ord_%00%E2%80%AEevil HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {token_keys.operator_token}\r\n".encode()
        + b"Connection: close\r\n\r\n",
    )
    assert status_of(raw) == 404
    _, body = head_and_body(raw)
    detail = json.loads(body)["detail"]
    assert "\x00" not in detail
    assert "\u202e" not in detail
