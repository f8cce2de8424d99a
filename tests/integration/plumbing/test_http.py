"""HTTP plumbing: typed bodies, problems, auth, body limit, Idempotency-Key, operations.

A tiny app built the way every service builds its own (``Api`` + ``create_app``)
with one POST endpoint that creates a row, against a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from shared import db
from shared.http import idempotency
from shared.http.api import Api, Call
from shared.http.app import create_app
from shared.http.problems import PROBLEM_CONTENT_TYPE, invalid
from shared.migrations import PLUMBING_MIGRATIONS, migrate
from shared.settings import Secret
from shared.tokens import Role, TokenIssuer, TokenVerifier, generate_keypair
from tests.support.infra import Infra, temporary_database
from tests.support.keys import TokenKeys

MAX_BODY_BYTES = 4096


class Part(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    quantity: int


class WidgetIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    size: int
    parts: list[Part] = []


class WidgetOut(msgspec.Struct):
    id: str
    name: str
    size: int
    owner: str


api = Api("Widgets (plumbing test)")


@api.route(
    "POST",
    "/v1/widgets",
    summary="Create a widget",
    roles=frozenset({"partner"}),
    body=WidgetIn,
    response=WidgetOut,
    status=201,
)
async def create_widget(call: Call[WidgetIn, None]) -> WidgetOut:
    body = call.body
    if body.size > 100:
        raise invalid("size", "must be at most 100")
    widget = WidgetOut(
        id=f"wid_{uuid.uuid4().hex}", name=body.name, size=body.size, owner=call.caller.subject
    )
    async with call.transaction() as conn:
        await conn.execute(
            "INSERT INTO widgets (id, name, size, owner) VALUES ($1, $2, $3, $4)",
            widget.id,
            widget.name,
            widget.size,
            widget.owner,
        )
        if body.name.startswith("slow"):
            # Keeps the transaction (and so the claimed key) open a while.
            await conn.execute("SELECT pg_sleep(0.3)")
    return widget


class Polished(msgspec.Struct):
    polished: bool


@api.route(
    "POST",
    "/v1/widgets/polish",
    summary="Polish every widget (no body)",
    roles=frozenset({"partner"}),
    response=Polished,
)
async def polish_widgets(call: Call[None, None]) -> Polished:
    return Polished(polished=True)


@dataclass
class Widgets:
    client: TestClient[aiohttp.web.Request, aiohttp.web.Application]
    pool: db.Pool
    issuer: TokenIssuer
    operator_token: str

    def token(self, role: Role = "partner", subject: str | None = None) -> str:
        return self.issuer.issue(subject or f"{role[:3]}_{uuid.uuid4().hex[:8]}", role, 0)

    async def post(
        self,
        body: bytes | dict[str, Any],
        *,
        token: str | None = None,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if key is not None:
            sent["Idempotency-Key"] = key
        data = body if isinstance(body, bytes) else msgspec.json.encode(body)
        response = await self.client.post("/v1/widgets", data=data, headers=sent)
        raw = await response.read()
        document: dict[str, Any] = msgspec.json.decode(raw) if raw else {}
        return response.status, document, response

    async def rows_named(self, name: str) -> int:
        count: int = await self.pool.fetchval("SELECT count(*) FROM widgets WHERE name = $1", name)
        return count


@pytest.fixture(scope="module")
async def widgets(infra: Infra, token_keys: TokenKeys) -> AsyncIterator[Widgets]:
    async with temporary_database(infra, "http_plumbing") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn, [("plumbing", PLUMBING_MIGRATIONS)])
            await conn.execute(
                "CREATE TABLE widgets (id text PRIMARY KEY, name text NOT NULL,"
                " size integer NOT NULL, owner text NOT NULL)"
            )
        finally:
            await conn.close()
        pool = await db.create_pool(dsn, min_size=1, max_size=10)
        app = create_app(
            api=api,
            pool=pool,
            verifier=TokenVerifier(token_keys.public_pem, Secret(token_keys.operator_token)),
            readiness=[("database", lambda: db.database_reachable(pool))],
            max_body_bytes=MAX_BODY_BYTES,
        )
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            yield Widgets(
                client=client,
                pool=pool,
                issuer=TokenIssuer(token_keys.private_pem, ttl=timedelta(minutes=10)),
                operator_token=token_keys.operator_token,
            )
        finally:
            await client.close()
            await pool.close()


def unique(label: str = "w") -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


def assert_problem(
    status: int, document: dict[str, Any], response: aiohttp.ClientResponse, expected: int
) -> None:
    assert status == expected, document
    assert response.content_type == PROBLEM_CONTENT_TYPE
    assert document["status"] == expected
    assert document["type"].startswith("urn:problem:")
    assert document["title"]
    assert document["detail"]


# --------------------------------------------------------------------------- bodies


async def test_a_valid_request_creates_the_row(widgets: Widgets) -> None:
    name = unique()
    status, document, response = await widgets.post(
        {"name": name, "size": 3, "parts": [{"name": "bolt", "quantity": 2}]},
        token=widgets.token(subject="prt_valid"),
    )
    assert status == 201
    assert response.content_type == "application/json"
    assert document["name"] == name
    assert document["owner"] == "prt_valid"
    assert await widgets.rows_named(name) == 1


@pytest.mark.parametrize(
    "body",
    [b'{"name": "x", "size": ', b"not json at all", b'{"name": "x", "size": 1} trailing', b""],
    ids=["truncated", "garbage", "trailing", "empty"],
)
async def test_a_malformed_body_is_a_400_problem(widgets: Widgets, body: bytes) -> None:
    status, document, response = await widgets.post(body, token=widgets.token())
    assert_problem(status, document, response, 400)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "size": "big"}, "size"),
        ({"name": 5, "size": 1}, "name"),
        ({"size": 1}, "name"),
        ({"name": "x", "size": 1, "colour": "red"}, "colour"),
        (
            {"name": "x", "size": 1, "parts": [{"name": "a", "quantity": 1}, {"name": "b"}]},
            "parts[1].quantity",
        ),
        ({"name": "x", "size": 1, "parts": [{"name": "a", "quantity": "1"}]}, "parts[0].quantity"),
        ({"name": "x", "size": 1, "parts": [{"name": "a", "quantity": 1, "x": 0}]}, "parts[0].x"),
        ({"name": "x", "size": 1, "parts": {"name": "a"}}, "parts"),
        ({"name": "x", "size": 101}, "size"),  # a rule of the handler's, not of the type
    ],
)
async def test_an_invalid_body_is_a_422_naming_the_field(
    widgets: Widgets, body: dict[str, Any], field: str
) -> None:
    status, document, response = await widgets.post(body, token=widgets.token())
    assert_problem(status, document, response, 422)
    assert document["errors"][0]["field"] == field
    assert document["errors"][0]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "a\u0000b", "size": 1}, "name"),
        ({"name": "x", "size": 1, "parts": [{"name": "\u0000", "quantity": 1}]}, "parts[0].name"),
    ],
)
async def test_a_nul_character_in_a_string_is_a_422_naming_the_field(
    widgets: Widgets, body: dict[str, Any], field: str
) -> None:
    # PostgreSQL text cannot hold NUL; the contract allows no 500 for a bad request.
    status, document, response = await widgets.post(body, token=widgets.token())
    assert_problem(status, document, response, 422)
    assert document["errors"][0]["field"] == field


async def test_a_body_that_is_not_an_object_is_a_422(widgets: Widgets) -> None:
    status, document, response = await widgets.post(b"[1, 2]", token=widgets.token())
    assert_problem(status, document, response, 422)
    assert document["errors"][0]["field"] == "body"


async def test_an_oversized_body_is_a_413_problem(widgets: Widgets) -> None:
    name = unique("x" * MAX_BODY_BYTES)
    status, document, response = await widgets.post(
        {"name": name, "size": 1}, token=widgets.token()
    )
    assert_problem(status, document, response, 413)
    assert await widgets.rows_named(name) == 0


async def test_a_body_that_is_not_json_is_a_415_problem(widgets: Widgets) -> None:
    status, document, response = await widgets.post(
        b"name=x", token=widgets.token(), headers={"Content-Type": "text/plain"}
    )
    assert_problem(status, document, response, 415)


@pytest.mark.parametrize("body", [b"", b"{}", b" {} "], ids=["none", "empty-object", "spaced"])
async def test_an_endpoint_without_a_body_takes_none_or_an_empty_object(
    widgets: Widgets, body: bytes
) -> None:
    response = await widgets.client.post(
        "/v1/widgets/polish",
        data=body,
        headers={"Authorization": f"Bearer {widgets.token()}", "Content-Type": "application/json"},
    )
    assert response.status == 200, await response.text()
    assert msgspec.json.decode(await response.read()) == {"polished": True}


@pytest.mark.parametrize(
    ("body", "content_type", "expected", "field"),
    [
        (b"{garbage", "application/json", 400, None),
        (b'{"force": true}', "application/json", 422, "force"),
        (b"force=1", "text/plain", 415, None),
    ],
    ids=["broken-json", "a-field-it-does-not-read", "not-json"],
)
async def test_an_endpoint_without_a_body_refuses_one_that_says_something(
    widgets: Widgets, body: bytes, content_type: str, expected: int, field: str | None
) -> None:
    """A client sending fields to such an endpoint believes they mean something."""
    response = await widgets.client.post(
        "/v1/widgets/polish",
        data=body,
        headers={"Authorization": f"Bearer {widgets.token()}", "Content-Type": content_type},
    )
    document = msgspec.json.decode(await response.read())
    assert_problem(response.status, document, response, expected)
    if field is not None:
        assert document["errors"][0]["field"] == field


# --------------------------------------------------------------------------- auth


async def test_a_missing_token_is_a_401_problem(widgets: Widgets) -> None:
    status, document, response = await widgets.post({"name": unique(), "size": 1})
    assert_problem(status, document, response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Token abc"],
)
async def test_a_malformed_authorization_header_is_a_401_problem(
    widgets: Widgets, header: str
) -> None:
    status, document, response = await widgets.post(
        {"name": unique(), "size": 1}, headers={"Authorization": header}
    )
    assert_problem(status, document, response, 401)


async def test_a_bad_token_is_a_401_problem(widgets: Widgets) -> None:
    other_issuer = TokenIssuer(generate_keypair()[0], ttl=timedelta(minutes=5))
    expired = widgets.issuer.issue(
        "prt_old", "partner", 0, now=datetime.now(UTC) - timedelta(hours=1)
    )
    for token in ("garbage", other_issuer.issue("prt_1", "partner", 0), expired):
        name = unique()
        status, document, response = await widgets.post({"name": name, "size": 1}, token=token)
        assert_problem(status, document, response, 401)
        assert await widgets.rows_named(name) == 0
    status, document, _ = await widgets.post({"name": unique(), "size": 1}, token=expired)
    assert "expired" in document["detail"]


@pytest.mark.parametrize("role", ["customer", "operator"])
async def test_a_caller_without_the_role_is_a_403_problem(widgets: Widgets, role: Role) -> None:
    token = widgets.operator_token if role == "operator" else widgets.token(role)
    name = unique()
    status, document, response = await widgets.post({"name": name, "size": 1}, token=token)
    assert_problem(status, document, response, 403)
    assert await widgets.rows_named(name) == 0


async def test_auth_is_checked_before_the_body(widgets: Widgets) -> None:
    status, document, response = await widgets.post(b"not json")
    assert_problem(status, document, response, 401)


# --------------------------------------------------------------------------- Idempotency-Key


async def test_an_idempotency_key_replay_returns_the_first_response(widgets: Widgets) -> None:
    token, key, name = widgets.token(), unique("key"), unique()
    body = {"name": name, "size": 5}
    first_status, first, first_response = await widgets.post(body, token=token, key=key)
    assert first_status == 201
    assert "Idempotent-Replayed" not in first_response.headers
    for _ in range(2):
        status, again, response = await widgets.post(body, token=token, key=key)
        assert status == 201
        assert again == first  # same id, same everything
        assert response.content_type == "application/json"
        assert response.headers["Idempotent-Replayed"] == "true"
    assert await widgets.rows_named(name) == 1


async def test_a_reused_key_with_another_body_is_a_409_problem(widgets: Widgets) -> None:
    token, key, name = widgets.token(), unique("key"), unique()
    assert (await widgets.post({"name": name, "size": 5}, token=token, key=key))[0] == 201
    status, document, response = await widgets.post({"name": name, "size": 6}, token=token, key=key)
    assert_problem(status, document, response, 409)
    assert await widgets.rows_named(name) == 1


async def test_a_key_past_its_retention_is_claimed_anew(widgets: Widgets) -> None:
    token, key, name = widgets.token(), unique("key"), unique()
    assert (await widgets.post({"name": name, "size": 5}, token=token, key=key))[0] == 201
    await widgets.pool.execute(
        "UPDATE idempotency_keys SET created_at = now() - make_interval(hours => $1)",
        idempotency.RETENTION_HOURS + 1,
    )
    status, created, response = await widgets.post({"name": name, "size": 6}, token=token, key=key)
    assert (status, created["size"]) == (201, 6)
    assert "Idempotent-Replayed" not in response.headers
    status, again, response = await widgets.post({"name": name, "size": 6}, token=token, key=key)
    assert (status, again) == (201, created)
    assert response.headers["Idempotent-Replayed"] == "true"
    assert await widgets.rows_named(name) == 2


async def test_concurrent_requests_with_one_key_create_one_row(widgets: Widgets) -> None:
    token, key, name = widgets.token(), unique("key"), unique("slow")
    body = {"name": name, "size": 5}
    results = await asyncio.gather(*(widgets.post(body, token=token, key=key) for _ in range(5)))
    assert [status for status, _, _ in results] == [201] * 5
    assert len({msgspec.json.encode(document) for _, document, _ in results}) == 1
    replayed = [r.headers.get("Idempotent-Replayed") for _, _, r in results]
    assert replayed.count("true") == 4
    assert await widgets.rows_named(name) == 1


async def test_concurrent_requests_with_an_expired_key_make_one_row_and_never_the_old_reply(
    widgets: Widgets,
) -> None:
    subject, key, name = f"prt_{uuid.uuid4().hex[:8]}", unique("key"), unique("slow")
    token = widgets.token(subject=subject)
    status, old, _ = await widgets.post({"name": name, "size": 5}, token=token, key=key)
    assert status == 201
    await widgets.pool.execute(
        "UPDATE idempotency_keys SET created_at = now() - make_interval(hours => $1)"
        " WHERE principal = $2",
        idempotency.RETENTION_HOURS + 1,
        subject,
    )
    body = {"name": name, "size": 6}
    results = await asyncio.gather(*(widgets.post(body, token=token, key=key) for _ in range(8)))
    assert [status for status, _, _ in results] == [201] * 8
    documents = {msgspec.json.encode(document) for _, document, _ in results}
    assert len(documents) == 1
    assert results[0][1]["id"] != old["id"]
    replayed = [r.headers.get("Idempotent-Replayed") for _, _, r in results]
    assert replayed.count("true") == 7
    assert await widgets.rows_named(name) == 2


async def test_a_failed_request_does_not_use_up_the_key(widgets: Widgets) -> None:
    token, key, name = widgets.token(), unique("key"), unique()
    status, document, response = await widgets.post(
        {"name": name, "size": 500}, token=token, key=key
    )
    assert_problem(status, document, response, 422)
    assert await widgets.rows_named(name) == 0
    # The same key is free for the corrected request (not a 409, not the 422 replayed).
    status, created, _ = await widgets.post({"name": name, "size": 50}, token=token, key=key)
    assert status == 201
    assert created["size"] == 50
    assert await widgets.rows_named(name) == 1


async def test_keys_are_scoped_to_the_caller(widgets: Widgets) -> None:
    key, name = unique("key"), unique()
    body = {"name": name, "size": 5}
    one = await widgets.post(body, token=widgets.token(subject="prt_one"), key=key)
    two = await widgets.post(body, token=widgets.token(subject="prt_two"), key=key)
    assert (one[0], two[0]) == (201, 201)
    assert one[1]["id"] != two[1]["id"]
    assert await widgets.rows_named(name) == 2


@pytest.mark.parametrize("key", ["k" * 256, "tab\tkey"])
async def test_an_unusable_idempotency_key_is_a_422(widgets: Widgets, key: str) -> None:
    name = unique()
    status, document, response = await widgets.post(
        {"name": name, "size": 1}, token=widgets.token(), key=key
    )
    assert_problem(status, document, response, 422)
    assert document["errors"][0]["field"] == "Idempotency-Key"
    assert await widgets.rows_named(name) == 0


# --------------------------------------------------------------------------- operations


async def test_openapi_lists_the_endpoint_with_its_request_schema(widgets: Widgets) -> None:
    response = await widgets.client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")
    operation = document["paths"]["/v1/widgets"]["post"]
    schema_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schema_ref == "#/components/schemas/WidgetIn"
    schemas = document["components"]["schemas"]
    widget_in = schemas["WidgetIn"]
    assert set(widget_in["properties"]) == {"name", "size", "parts"}
    assert set(widget_in["required"]) == {"name", "size"}
    assert widget_in["properties"]["size"]["type"] == "integer"
    assert "Part" in schemas
    assert "201" in operation["responses"]
    assert operation["security"] == [{"bearerAuth": []}]
    assert any(p["name"] == "Idempotency-Key" for p in operation["parameters"])
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert path in document["paths"]


async def test_metrics_are_prometheus_text(widgets: Widgets) -> None:
    await widgets.post({"name": unique(), "size": 1}, token=widgets.token())
    response = await widgets.client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert "# TYPE http_requests_total counter" in text
    assert 'http_requests_total{method="POST",route="/v1/widgets",status="201"}' in text


async def test_health_and_readiness(widgets: Widgets) -> None:
    healthz = await widgets.client.get("/healthz")
    assert healthz.status == 200
    readyz = await widgets.client.get("/readyz")
    assert readyz.status == 200
    assert (await readyz.json())["status"] == "ready"


async def test_unknown_routes_and_methods_are_problems(widgets: Widgets) -> None:
    missing = await widgets.client.get("/v1/nothing-here")
    assert missing.status == 404
    assert missing.content_type == PROBLEM_CONTENT_TYPE
    wrong_method = await widgets.client.delete("/v1/widgets")
    assert wrong_method.status == 405
    assert wrong_method.content_type == PROBLEM_CONTENT_TYPE
    assert "POST" in wrong_method.headers["Allow"]


async def test_every_response_carries_a_correlation_id(widgets: Widgets) -> None:
    response = await widgets.client.get("/healthz", headers={"X-Correlation-Id": "corr-123"})
    assert response.headers["X-Correlation-Id"] == "corr-123"
    generated = await widgets.client.get("/healthz")
    assert generated.headers["X-Correlation-Id"]
