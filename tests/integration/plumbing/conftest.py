"""Fixtures for the plumbing tests: a database with the plumbing tables, and a pool on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared import db
from shared.migrations import PLUMBING_MIGRATIONS, migrate
from tests.support.events import EFFECTS_TABLE


@pytest.fixture
async def plumbing_db(fresh_database: str) -> str:
    """A fresh database migrated with the shared plumbing, plus the tests' ``effects`` table."""
    conn = await asyncpg.connect(fresh_database)
    try:
        await migrate(conn, [("plumbing", PLUMBING_MIGRATIONS)])
        await conn.execute(EFFECTS_TABLE)
    finally:
        await conn.close()
    return fresh_database


@pytest.fixture
async def pool(plumbing_db: str) -> AsyncIterator[db.Pool]:
    created = await db.create_pool(plumbing_db, min_size=1, max_size=5)
    yield created
    await created.close()
