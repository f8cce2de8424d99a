"""Durable timers: a deadline recorded with the decision, fired once by some replica.

A handler that decides "do X for <key> at <time>" calls ``schedule`` inside its
own transaction, so the deadline exists exactly when the decision does; a
rollback leaves no timer behind.  ``TimerLoop`` runs in every replica.  Each
timer is claimed in a transaction of its own with ``FOR UPDATE SKIP LOCKED``:
replicas never fire the same timer and never wait for a timer another replica
holds.  The handler runs in that transaction, and the timer is deleted in it,
so either both the effect and the deletion commit or neither does: a replica
that dies mid-handler leaves the timer for the next pass (of any replica).

A handler that raises is rolled back to a savepoint; the timer stays, with its
attempts counted and its next attempt pushed back by ``RetryPolicy``, so one
failing timer never holds up the others.  After ``retry.max_attempts`` failed
attempts the timer is parked (``parked_at``): it is kept, never retried by the
loop, logged at ERROR and counted in ``timers_parked_total``, for an operator
to fix the cause and un-park it.  A lost database connection is not counted as
an attempt: nothing could be recorded, and the loop tries again after backoff.

Due is decided by the loop's ``clock``, not the database's, so tests move a
clock instead of sleeping.

A due timer of a kind the loop has no handler for (a handler renamed or
removed while its timers were still scheduled) is never claimed, so it holds
up no other timer; but it would never fire either, so the loop reports it: a
WARNING naming the kind, once per kind, and the gauge ``timers_due_unhandled``
per kind, refreshed every ``unhandled_check_seconds``.  One loop per service
must therefore hold every kind the service schedules.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

from shared.clock import Clock, utc_now
from shared.db import TRANSIENT_DB_ERRORS, Connection, Pool
from shared.metrics import TIMERS_FAILED, TIMERS_FIRED, TIMERS_PARKED, TIMERS_UNHANDLED
from shared.retry import RetryPolicy
from shared.runtime import PollingLoop

log = logging.getLogger(__name__)

TimerHandler = Callable[[Connection, str], Awaitable[None]]

# Handler failures: about 17 minutes of attempts, then the timer is parked.
DEFAULT_RETRY = RetryPolicy(max_attempts=10, first_backoff=1.0, max_backoff=600.0)
_ERROR_TEXT_LIMIT = 2000


async def schedule(conn: Connection, *, kind: str, key: str, due_at: datetime) -> None:
    """Fire ``kind`` for ``key`` at ``due_at``; replaces an earlier schedule of the same pair."""
    await conn.execute(
        "INSERT INTO timers (kind, key, due_at, next_attempt_at) VALUES ($1, $2, $3, $3)"
        " ON CONFLICT (kind, key) DO UPDATE SET due_at = EXCLUDED.due_at,"
        " next_attempt_at = EXCLUDED.due_at, attempts = 0, last_error = NULL,"
        " parked_at = NULL, scheduled_at = now()",
        kind,
        key,
        due_at,
    )


async def cancel(conn: Connection, *, kind: str, key: str) -> None:
    """Forget the timer, if any.  Waits for a replica firing it right now to finish."""
    await conn.execute("DELETE FROM timers WHERE kind = $1 AND key = $2", kind, key)


class TimerLoop:
    def __init__(
        self,
        pool: Pool,
        handlers: Mapping[str, TimerHandler],
        *,
        clock: Clock = utc_now,
        poll_seconds: float = 1.0,
        batch_size: int = 100,
        retry: RetryPolicy = DEFAULT_RETRY,
        unhandled_check_seconds: float = 60.0,
    ) -> None:
        self._pool = pool
        self._handlers = dict(handlers)
        self._kinds = sorted(self._handlers)
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._retry = retry
        self._unhandled_check_seconds = unhandled_check_seconds
        self._unhandled_checked_at: float | None = None
        self._unhandled_seen: set[str] = set()
        self._loop = PollingLoop("timers", self._pass, transient=TRANSIENT_DB_ERRORS)

    def stop(self) -> None:
        self._loop.stop()

    async def run(self) -> None:
        await self._loop.run()

    async def _pass(self) -> float:
        fired = await self.fire_due()
        # A full batch means more may be due: go on without a nap.
        return 0.0 if fired >= self._batch_size else self._poll_seconds

    async def fire_due(self) -> int:
        """One pass: fire timers due by the clock, up to ``batch_size``; return how many fired.

        A timer whose handler failed is rescheduled into the future, so it is
        not claimed again in the same pass.
        """
        now = self._clock()
        fired = 0
        for _ in range(self._batch_size):
            if self._loop.stopping:
                break
            outcome = await self._fire_one(now)
            if outcome is None:
                break
            fired += outcome
        await self._report_unhandled(now)
        return fired

    async def _report_unhandled(self, now: datetime) -> None:
        """Count due timers no handler here will ever fire; warn once per kind."""
        checked_at = asyncio.get_running_loop().time()
        if (
            self._unhandled_checked_at is not None
            and checked_at - self._unhandled_checked_at < self._unhandled_check_seconds
        ):
            return
        self._unhandled_checked_at = checked_at
        rows = await self._pool.fetch(
            "SELECT kind, count(*) AS due FROM timers WHERE parked_at IS NULL"
            " AND next_attempt_at <= $1 AND kind <> ALL($2::text[]) GROUP BY kind",
            now,
            self._kinds,
        )
        due = {row["kind"]: row["due"] for row in rows}
        for kind in self._unhandled_seen - due.keys():
            TIMERS_UNHANDLED.labels(kind).set(0)
        for kind, count in due.items():
            TIMERS_UNHANDLED.labels(kind).set(count)
            if kind not in self._unhandled_seen:
                log.warning(
                    "due timers of a kind without a handler; they will not fire",
                    extra={"timer_kind": kind, "due": count, "handled_kinds": self._kinds},
                )
        self._unhandled_seen |= due.keys()

    async def _fire_one(self, now: datetime) -> int | None:
        """Claim and fire one due timer: 1 if it fired, 0 if its handler failed, None if none."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT kind, key, attempts FROM timers"
                " WHERE parked_at IS NULL AND next_attempt_at <= $1 AND kind = ANY($2::text[])"
                " ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                now,
                self._kinds,
            )
            if row is None:
                return None
            kind: str = row["kind"]
            key: str = row["key"]
            try:
                async with conn.transaction():
                    # Deleted first, so a handler may schedule the same timer again.
                    await cancel(conn, kind=kind, key=key)
                    await self._handlers[kind](conn, key)
            except Exception as exc:
                await self._record_failure(conn, kind, key, row["attempts"] + 1, now, exc)
                return 0
        TIMERS_FIRED.labels(kind).inc()
        return 1

    async def _record_failure(
        self, conn: Connection, kind: str, key: str, attempts: int, now: datetime, exc: Exception
    ) -> None:
        TIMERS_FAILED.labels(kind).inc()
        parked = attempts >= self._retry.max_attempts
        await conn.execute(
            "UPDATE timers SET attempts = $3, next_attempt_at = $4, last_error = $5,"
            " parked_at = $6 WHERE kind = $1 AND key = $2",
            kind,
            key,
            attempts,
            now + timedelta(seconds=self._retry.backoff(attempts)),
            repr(exc)[:_ERROR_TEXT_LIMIT],
            now if parked else None,
        )
        context = {"timer_kind": kind, "timer_key": key, "attempts": attempts}
        if parked:
            TIMERS_PARKED.labels(kind).inc()
            log.error(
                "timer parked after its last attempt; an operator must un-park it",
                extra=context,
                exc_info=exc,
            )
        else:
            log.warning("timer handler failed, will retry", extra=context, exc_info=exc)
