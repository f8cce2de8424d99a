"""A tiny event contract for plumbing tests, known to the test and its child processes."""

from __future__ import annotations

from typing import ClassVar

from shared.contracts.envelope import Event, Topic

TEST_PRODUCER = "tests"

# What the consumer programs write for every event they apply (no constraint on
# event_id on purpose: a duplicate effect must show up as a second row).
EFFECTS_TABLE = """
CREATE TABLE IF NOT EXISTS effects (
    event_id   text        NOT NULL,
    n          integer     NOT NULL,
    applied_by integer     NOT NULL DEFAULT pg_backend_pid(),
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


class Ping(Event, frozen=True, kw_only=True):
    EVENT_TYPE: ClassVar[str] = "test.ping"
    SCHEMA_VERSION: ClassVar[int] = 1

    n: int


def ping_topic(name: str, partitions: int = 3) -> Topic:
    """A ``Topic`` for a test's own (already created) topic that carries ``Ping``."""
    return Topic(name, partitions, "a test key", (Ping,))
