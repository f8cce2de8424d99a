"""How the consumer classifies failures and isolates a bad event, as pure functions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from shared import db
from shared.consumer import (
    BatchConsumer,
    Delivery,
    Failure,
    PermanentError,
    RetryPolicy,
    _Partition,
    classify,
    halves,
)
from shared.contracts.envelope import EventRegistry
from shared.sequencing import PositionMoved
from tests.support.events import Ping


def refused_by_the_server() -> BaseException:
    """The OSError asyncpg raises when nothing listens where the database should be."""

    async def connect() -> None:
        # Nothing listens on port 1: asyncpg's own connect raises the OSError.
        await asyncpg.connect("postgresql://nobody@127.0.0.1:1/none", timeout=2)

    try:
        asyncio.run(connect())
    except (OSError, TimeoutError) as exc:
        return exc
    raise AssertionError("connecting to port 1 succeeded")


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.SerializationError("could not serialize access"),
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.TooManyConnectionsError("too many clients"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_the_database_saying_not_now_is_retried_without_limit(error: Exception) -> None:
    assert classify(error) is Failure.TRANSIENT


def test_an_os_error_from_the_driver_is_the_database_being_away() -> None:
    assert classify(refused_by_the_server()) is Failure.TRANSIENT


def test_a_timeout_while_connecting_is_transient_but_a_slow_query_is_bounded() -> None:
    async def connect_to_a_server_that_never_answers() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # accept and say nothing

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await asyncpg.connect(f"postgresql://nobody@127.0.0.1:{port}/none", timeout=0.2)

    with pytest.raises(TimeoutError) as connecting:
        asyncio.run(connect_to_a_server_that_never_answers())
    assert classify(connecting.value) is Failure.TRANSIENT

    async def query_that_times_out() -> None:
        # Not asyncpg's connect: the shape a command_timeout has.
        await asyncio.wait_for(asyncio.sleep(1), 0.01)

    with pytest.raises(TimeoutError) as querying:
        asyncio.run(query_that_times_out())
    assert classify(querying.value) is Failure.RETRYABLE


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("the pricing service went away"),
        OSError("disk full"),
        TimeoutError(),
        RuntimeError("flaky downstream"),
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_the_handlers_own_failures_are_retried_a_bounded_number_of_times(
    error: Exception,
) -> None:
    assert classify(error) is Failure.RETRYABLE


def test_a_permanent_error_is_dead_lettered_at_once() -> None:
    assert classify(PermanentError("offering does not exist")) is Failure.PERMANENT


def test_a_position_moved_by_another_member_is_no_failure() -> None:
    assert classify(PositionMoved("1 positions of ledger moved meanwhile")) is Failure.CONCURRENT


async def test_a_moved_position_is_retried_at_once_without_backoff_or_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another member committed first: the next attempt reads what it wrote.

    It is logged as what it is, and retried without the minute's backoff the
    policy would take after a database outage.
    """

    async def ignore(conn: db.Connection, deliveries: Sequence[Delivery]) -> None:
        raise AssertionError("no event is handled here")

    consumer = BatchConsumer(
        name="racing", bootstrap="127.0.0.1:1", topics=["t"], registry=EventRegistry([Ping]),
        handler=ignore, pool=cast(db.Pool, None), producer=cast(AIOKafkaProducer, None),
        retry=RetryPolicy(first_backoff=60, max_backoff=60),
    )  # fmt: skip
    attempts = 0

    async def attempt() -> Exception | None:
        nonlocal attempts
        attempts += 1
        return PositionMoved("1 positions of racing moved meanwhile") if attempts < 4 else None

    with caplog.at_level(logging.INFO, logger="shared.consumer"):
        settled = consumer._settle(TopicPartition("t", 0), _Partition(), attempt, bounded=True)
        assert await asyncio.wait_for(settled, 5) is None
    assert attempts == 4
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "shared.consumer"]
    assert logged == [(logging.INFO, "position moved by a concurrent member, retrying")] * 3


@given(st.integers(min_value=2, max_value=2000), st.data())
def test_halving_isolates_any_bad_event_in_about_log2_steps(size: int, data: st.DataObject) -> None:
    bad = data.draw(st.integers(min_value=0, max_value=size - 1))
    chunk = list(range(size))
    depth = 0
    while len(chunk) > 1:
        first, second = halves(chunk)
        assert list(first) + list(second) == chunk  # order kept, nothing lost
        assert first
        assert second
        chunk = list(first) if bad in first else list(second)
        depth += 1
    assert chunk == [bad]
    assert depth <= size.bit_length()


def test_the_handlers_os_error_while_handling_a_database_error_is_still_its_own() -> None:
    def fall_back() -> None:
        try:
            raise refused_by_the_server()
        except OSError:
            raise OSError("the handler's fallback file is missing")  # noqa: B904 - on purpose

    with pytest.raises(OSError, match="fallback") as raised:
        fall_back()
    assert raised.value.__context__ is not None
    assert classify(raised.value) is Failure.RETRYABLE
