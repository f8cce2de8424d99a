"""The marketplace's three HTTP doors, as one small client.

Every creating POST carries a fresh ``Idempotency-Key`` that is reused when the
request is retried, so a retry after a lost reply never creates twice.  A
refused connection is retried a few times (a service may be restarting) and
then reported as the service not running; 429 and 503 are retried after the
``Retry-After`` the service asks for.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from shared.retry import RetryPolicy

Service = Literal["catalog", "orders", "settlement"]

_RETRY_LATER = frozenset({429, 503})
_MAX_RETRY_AFTER = 5.0
# A refused connection is retried for a few seconds: long enough for a restart, short
# enough that "not running" is reported promptly.
PATIENCE = RetryPolicy(max_attempts=6, first_backoff=0.2, max_backoff=2.0)


class ServiceDown(Exception):
    def __init__(self, service: Service, url: str, why: str) -> None:
        super().__init__(f"{service} is not answering at {url} ({why})")
        self.service = service
        self.url = url


class Refused(Exception):
    """The service answered, but not with what the demo expected."""

    def __init__(self, method: str, path: str, status: int, body: object) -> None:
        detail = body.get("detail", "") if isinstance(body, Mapping) else str(body)[:200]
        errors = body.get("errors", []) if isinstance(body, Mapping) else []
        fields = ", ".join(
            f"{error.get('field')}: {error.get('message')}"
            for error in errors
            if isinstance(error, Mapping)
        )
        super().__init__(
            f"{method} {path} answered {status}: {detail}" + (f" ({fields})" if fields else "")
        )
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any


class Marketplace:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        urls: Mapping[Service, str],
        retry: RetryPolicy = PATIENCE,
    ) -> None:
        self._session = session
        self._urls = dict(urls)
        self._retry = retry

    def url(self, service: Service) -> str:
        return self._urls[service]

    async def send(
        self,
        service: Service,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: object = None,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Reply:
        headers: dict[str, str] = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        url = self._urls[service] + path
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._session.request(
                    method, url, json=body, params=params, headers=headers
                ) as response:
                    if response.status in _RETRY_LATER and attempt < self._retry.max_attempts:
                        wait = _retry_after(response.headers.get("Retry-After"))
                        await asyncio.sleep(wait or self._retry.backoff(attempt))
                        continue
                    if response.content_type.endswith("json"):
                        payload: Any = await response.json(content_type=None)
                    else:
                        payload = await response.text()
                    return Reply(response.status, payload)
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                if attempt >= self._retry.max_attempts:
                    raise ServiceDown(service, self._urls[service], type(exc).__name__) from exc
                await asyncio.sleep(self._retry.backoff(attempt))

    async def create(self, service: Service, path: str, *, token: str | None, body: object) -> Any:
        """POST something new; its body on 200/201/202, else ``Refused``."""
        reply = await self.send(
            service, "POST", path, token=token, body=body, idempotency_key=str(uuid.uuid4())
        )
        return _expect(reply, "POST", path, (200, 201, 202))

    async def act(self, service: Service, path: str, *, token: str, body: object = None) -> Any:
        """POST a state change (accept, complete, cancel ...)."""
        reply = await self.send(service, "POST", path, token=token, body=body)
        return _expect(reply, "POST", path, (200, 201, 202, 204))

    async def get(
        self,
        service: Service,
        path: str,
        *,
        token: str,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        reply = await self.send(service, "GET", path, token=token, params=params)
        return _expect(reply, "GET", path, (200,))

    async def pages(
        self, service: Service, path: str, *, token: str, params: Mapping[str, str]
    ) -> list[Any]:
        """Every page of a cursor-paginated list (a reply without a cursor is one page)."""
        query = dict(params)
        bodies: list[Any] = []
        while True:
            body = await self.get(service, path, token=token, params=query)
            bodies.append(body)
            cursor = body.get("next_cursor") if isinstance(body, Mapping) else None
            if not isinstance(cursor, str) or not cursor or len(bodies) >= 100:
                return bodies
            query["cursor"] = cursor

    async def ready(self, service: Service) -> str | None:
        """None when the service says it is ready, else why not."""
        try:
            reply = await self.send(service, "GET", "/readyz")
        except ServiceDown as exc:
            return str(exc)
        if reply.status != 200:
            return f"{service} at {self._urls[service]} is not ready (readyz {reply.status})"
        return None


def _expect(reply: Reply, method: str, path: str, statuses: tuple[int, ...]) -> Any:
    if reply.status not in statuses:
        raise Refused(method, path, reply.status, reply.body)
    return reply.body


def _retry_after(value: str | None) -> float | None:
    try:
        return min(_MAX_RETRY_AFTER, max(0.0, float(value))) if value else None
    except ValueError:
        return None
