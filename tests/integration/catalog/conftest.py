"""The real catalog service, run in-process against real PostgreSQL and Kafka.

``catalog`` starts ``run_service`` with the production composition once per
test module, on a database and a Kafka topic namespace of its own, and hands
the tests a small client.  Tests in one module share the service, so each
test makes its own partners, customers and offerings (names carry a random
suffix) and never depends on what another test left behind.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import pytest_asyncio

from deploy.local.infra import free_port
from services.catalog.__main__ import MIGRATIONS, TOPICS, CatalogSettings, composer
from shared.contracts.envelope import Envelope, Event, EventRegistry, Topic, decode_envelope
from shared.settings import Secret
from tests.support.infra import Infra, temporary_database
from tests.support.kafka import TopicReader
from tests.support.keys import TokenKeys
from tests.support.running import running_service, settings_of
from tests.support.waiting import wait_for

_NO_BODY = object()


def unique(label: str) -> str:
    """A name no other test of the session uses."""
    return f"{label} {uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def fields(self) -> list[str]:
        """The fields a problem response names (``errors[].field``)."""
        if not isinstance(self.body, dict):
            return []
        return [error["field"] for error in self.body.get("errors", [])]

    def expect(self, status: int) -> Any:
        assert self.status == status, f"expected {status}, got {self.status}: {self.body}"
        return self.body


def as_outsider_sees(offering: Mapping[str, Any]) -> dict[str, Any]:
    """An offering as a caller who is party to none of its co-sell terms sees it."""
    hidden = ("agreement_id", "share_bps")
    return {
        **offering,
        "components": [
            {k: v for k, v in component.items() if k not in hidden}
            for component in offering["components"]
        ],
    }


@dataclass(frozen=True)
class Account:
    """A partner or a customer together with the bearer token it was given."""

    id: str
    name: str
    token: str
    kind: str | None = None


@dataclass(frozen=True)
class TopicEvent:
    key: str
    envelope: Envelope
    event: Event
    value: bytes


@dataclass
class Catalog:
    base_url: str
    operator_token: str
    database_url: str
    kafka_bootstrap: str
    topic_prefix: str
    session: aiohttp.ClientSession

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = _NO_BODY,
        raw: bytes | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data: bytes | None = raw
        if body is not _NO_BODY:
            assert raw is None
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        elif raw is not None:
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.base_url + path, data=data, params=params, headers=sent
        ) as response:
            text = await response.text()
            decoded: Any = None
            if text and response.content_type in ("application/json", "application/problem+json"):
                decoded = await response.json(content_type=None)
            return Reply(response.status, decoded, dict(response.headers))

    # Accounts

    async def onboard_partner(self, kind: str = "isv", name: str | None = None) -> Account:
        reply = await self.call(
            "POST",
            "/v1/partners",
            token=self.operator_token,
            body={"name": name or unique(f"{kind} partner"), "kind": kind},
        )
        created = reply.expect(201)
        return Account(created["id"], created["name"], created["token"], created["kind"])

    async def sign_up_customer(self, name: str | None = None) -> Account:
        name = name or unique("customer")
        email = f"{uuid.uuid4().hex}@example.com"
        reply = await self.call("POST", "/v1/customers", body={"name": name, "email": email})
        created = reply.expect(201)
        return Account(created["id"], created["name"], created["token"])

    # Agreements

    async def grant(
        self,
        grantor: Account,
        grantee: Account,
        *,
        role: str | None = None,
        share_bps: int = 2_500,
        expires_at: datetime | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "grantee_id": grantee.id,
            "role": role or grantor.kind,
            "share_bps": share_bps,
        }
        if expires_at is not None:
            body["expires_at"] = expires_at.isoformat()
        reply = await self.call("POST", "/v1/agreements", token=grantor.token, body=body)
        created: dict[str, Any] = reply.expect(201)
        return created

    # Offerings

    @staticmethod
    def component(
        partner: Account,
        *,
        agreement: Mapping[str, Any] | None = None,
        role: str | None = None,
        name: str = "Part",
        pricing: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        component: dict[str, Any] = {
            "partner_id": partner.id,
            "role": role or partner.kind,
            "name": name,
            "pricing": dict(pricing or {"model": "one_time", "unit_amount": 10_000}),
        }
        if agreement is not None:
            component["agreement_id"] = agreement["id"]
        return component

    def offering_body(
        self,
        owner: Account,
        *,
        name: str | None = None,
        description: str = "An offering made by a test",
        currency: str = "USD",
        components: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        return {
            "name": name or unique("Offering"),
            "description": description,
            "currency": currency,
            "components": components if components is not None else [self.component(owner)],
        }

    async def create_offering(
        self,
        owner: Account,
        *,
        name: str | None = None,
        description: str = "An offering made by a test",
        currency: str = "USD",
        components: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        body = self.offering_body(
            owner, name=name, description=description, currency=currency, components=components
        )
        reply = await self.call("POST", "/v1/offerings", token=owner.token, body=body)
        created: dict[str, Any] = reply.expect(201)
        return created

    async def publish(self, owner: Account, offering_id: str) -> dict[str, Any]:
        reply = await self.call("POST", f"/v1/offerings/{offering_id}/publish", token=owner.token)
        published: dict[str, Any] = reply.expect(200)
        return published

    async def publish_new(
        self,
        owner: Account,
        *,
        name: str | None = None,
        description: str = "An offering made by a test",
        components: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        draft = await self.create_offering(
            owner, name=name, description=description, components=components
        )
        return await self.publish(owner, draft["id"])

    async def offering(self, offering_id: str, token: str | None = None) -> dict[str, Any]:
        reply = await self.call(
            "GET", f"/v1/offerings/{offering_id}", token=token or self.operator_token
        )
        found: dict[str, Any] = reply.expect(200)
        return found

    # Kafka and the database

    def topic_name(self, topic: Topic) -> str:
        return self.topic_prefix + topic.name

    async def wait_for_events(
        self,
        topic: Topic,
        done: Callable[[list[TopicEvent]], bool],
        *,
        message: str,
        within: float = 20,
    ) -> list[TopicEvent]:
        """Read ``topic`` from its beginning until ``done`` holds for what was read."""
        registry = EventRegistry(topic.events)
        async with TopicReader(self.kafka_bootstrap, self.topic_name(topic)) as reader:

            async def read() -> list[TopicEvent] | None:
                events = [_decoded(record, registry) for record in await reader.poll()]
                return events if done(events) else None

            return await wait_for(read, timeout=within, message=message)

    @asynccontextmanager
    async def database(self) -> AsyncIterator[asyncpg.Connection[asyncpg.Record]]:
        """The service's own database, to check what it stored."""
        conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(self.database_url)
        try:
            yield conn
        finally:
            await conn.close()


def _decoded(record: Any, registry: EventRegistry) -> TopicEvent:
    value = bytes(record.value)
    envelope = decode_envelope(value)
    return TopicEvent(bytes(record.key).decode(), envelope, registry.decode(envelope), value)


@asynccontextmanager
async def running_catalog(
    infra: Infra, keys: TokenKeys, **overrides: Any
) -> AsyncIterator[Catalog]:
    """The real catalog on a database and topic namespace of its own, and a client for it."""
    async with temporary_database(infra, "catalog") as dsn:
        values: dict[str, Any] = {
            "database_url": dsn,
            "http_port": free_port(),
            "operator_token": Secret(keys.operator_token),
            "token_public_key_file": keys.public_key_file,
            "token_signing_key_file": keys.private_key_file,
            "kafka_bootstrap": infra.kafka_bootstrap,
            "topic_prefix": f"t{uuid.uuid4().hex[:10]}.",
            "shutdown_timeout_seconds": 5,
            **overrides,
        }
        settings = settings_of(CatalogSettings, values)
        async with (
            running_service(
                "catalog",
                settings,
                migrations=MIGRATIONS,
                topics=TOPICS,
                compose=composer(settings),
            ) as base_url,
            aiohttp.ClientSession() as session,
        ):
            yield Catalog(
                base_url=base_url,
                operator_token=keys.operator_token,
                database_url=dsn,
                kafka_bootstrap=infra.kafka_bootstrap,
                topic_prefix=settings.topic_prefix,
                session=session,
            )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def catalog(infra: Infra, token_keys: TokenKeys) -> AsyncIterator[Catalog]:
    async with running_catalog(
        infra,
        token_keys,
        agreement_expiry_check_seconds=0.2,
        # Tests sign up many customers from one address and drive one token hard;
        # tests/security checks the limits.
        public_rate_limit_per_minute=100_000,
        public_rate_limit_burst=10_000,
        principal_rate_limit_per_minute=600_000,
        principal_rate_limit_burst=100_000,
    ) as running:
        yield running
