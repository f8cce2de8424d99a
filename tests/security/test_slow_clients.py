"""Item 5: slow senders are cut off in bounded time and never starve real clients."""

from __future__ import annotations

import asyncio
import time

from tests.integration.catalog.conftest import Catalog
from tests.security.conftest import BODY_TIMEOUT, HEADER_TIMEOUT, port_of
from tests.support.waiting import wait_for

SLOW_CLIENTS = 100

HALF_HEAD = b"GET /v1/offerings HTTP/1.1\r\nHost: x\r\nX-Slow: "
PART_BODY = (
    b"POST /v1/customers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n" + b'{"name": "a'
)


async def _open_slow(
    base_url: str, first_bytes: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    # The writer is kept: a collected writer closes its connection, which is not slow at all.
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(base_url))
    writer.write(first_bytes)
    await writer.drain()
    return reader, writer


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server ended the connection (with or without a 408 first)."""
    try:
        await asyncio.wait_for(reader.read(), 0.05)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return reader.at_eof()


async def test_slow_senders_are_cut_off_and_real_clients_are_served_meanwhile(
    catalog: Catalog,
) -> None:
    started = time.monotonic()
    slow = [
        await _open_slow(catalog.base_url, HALF_HEAD if n % 2 else PART_BODY)
        for n in range(SLOW_CLIENTS)
    ]
    customer = await catalog.sign_up_customer()
    served = await catalog.call("GET", "/v1/offerings", token=customer.token)
    assert served.status == 200
    assert time.monotonic() - started < HEADER_TIMEOUT + 5

    async def all_cut_off() -> bool:
        return all([await _closed_by_server(reader) for reader, _ in slow])

    bound = max(HEADER_TIMEOUT, BODY_TIMEOUT)
    try:
        await wait_for(all_cut_off, timeout=bound + 10, message="slow connections stayed open")
    finally:
        for _, writer in slow:
            writer.close()
