"""Items 2, 3 and 4: what cannot be parsed answers problem+json, logs one line, leaks nothing."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tests.integration.catalog.conftest import Catalog
from tests.security.conftest import LogRecorder, port_of, raw_exchange
from tests.support.waiting import wait_for

PROBLEM = b"application/problem+json"


def head_and_body(raw: bytes) -> tuple[str, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "path",
    ["/v1/customers", "/v1/partners", "/v1/offerings", "/v1/agreements"],
)
async def test_invalid_utf8_in_a_json_string_is_a_400(
    catalog: Catalog, service_log: LogRecorder, path: str
) -> None:
    field = b"grantee_id" if path == "/v1/agreements" else b"name"
    body = b'{"' + field + b'":"\xff","email":"a@b.co"}'
    token = {
        "/v1/customers": None,
        "/v1/partners": catalog.operator_token,
    }.get(path) or (await catalog.onboard_partner()).token
    reply = await catalog.call("POST", path, raw=body, token=token)
    assert reply.status == 400, reply.body
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert not service_log.at(logging.ERROR)


def _malformed_authorization(token: str) -> list[bytes]:
    """Header lines a careless client sends with a token, e.g. a token file ending in CRLF."""
    return [
        f"Authorization: Bearer {token}\r\r\n".encode(),
        f"Authorization: Bearer {token}\r\n\tcontinued\r\n".encode(),
        f"Authorization: Bearer {token}\x00\r\n".encode(),
        f"Authorization : Bearer {token}\r\n".encode(),
    ]


async def test_a_token_in_a_malformed_header_never_reaches_log_or_reply(
    catalog: Catalog, service_log: LogRecorder
) -> None:
    token = catalog.operator_token
    for line in _malformed_authorization(token):
        raw = await raw_exchange(
            catalog.base_url,
            b"GET /v1/offerings HTTP/1.1\r\nHost: x\r\n" + line + b"Connection: close\r\n\r\n",
        )
        assert raw, f"no reply to {line!r}"
        assert token.encode() not in raw, f"the token came back in the reply to {line!r}"
    # A token pasted into the one header that is echoed and logged (the correlation id).
    pasted = await catalog.call(
        "GET", "/v1/offerings", token=token, headers={"X-Correlation-Id": f"Bearer {token}"}
    )
    assert token not in str(pasted.headers)
    assert token not in service_log.text(), "the token reached the log"


OVERSIZED_HEADER = b"GET /v1/offerings HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
OVERSIZED_URL = b"GET /v1/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
UNKNOWN_METHOD = b"BR\x01EW /v1/offerings HTTP/1.1\r\nHost: x\r\n\r\n"
BAD_VERSION = b"GET /v1/offerings HTTP/9.Z\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "request_bytes",
    [OVERSIZED_HEADER, OVERSIZED_URL, UNKNOWN_METHOD, BAD_VERSION],
    ids=["oversized header", "oversized url", "unknown method", "bad version"],
)
async def test_unparseable_requests_answer_a_problem_and_log_one_warning(
    catalog: Catalog, service_log: LogRecorder, request_bytes: bytes
) -> None:
    raw = await raw_exchange(catalog.base_url, request_bytes)
    head, body = head_and_body(raw)
    assert 400 <= status_of(raw) < 500, head
    assert PROBLEM in head.encode(), head
    problem = json.loads(body)
    assert problem["status"] == status_of(raw)
    assert not service_log.at(logging.ERROR), [r.getMessage() for r in service_log.records]
    # Our own lines only: Kafka's client may warn about a partition leader meanwhile.
    warnings = [
        r
        for r in service_log.records
        if r.levelno == logging.WARNING and not r.name.startswith("aiokafka")
    ]
    assert len(warnings) == 1
    assert warnings[0].exc_info is None, "a traceback for every bad request floods the log"


async def test_a_client_that_disconnects_mid_body_is_not_an_error(
    catalog: Catalog, service_log: LogRecorder
) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port_of(catalog.base_url))
    writer.write(
        b"POST /v1/customers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n" + b'{"name": "a'
    )
    await writer.drain()
    await asyncio.sleep(0)  # the bytes are on their way; now the client goes away
    writer.close()

    def noticed() -> bool:
        return any(r.getMessage() == "client disconnected" for r in service_log.records)

    await wait_for(noticed, timeout=10, message="the service never noticed the client leave")
    assert not service_log.at(logging.ERROR)
