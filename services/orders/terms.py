"""The orderable terms a placement reads, remembered in the process.

Every placement needs its offerings' current versions and the agreements
they name, from the local copy of the catalog.  Read from PostgreSQL that is
a round trip on every placement, half of its round trips, for data that
changes only when the catalog copy applies a catalog event.  So the terms
are remembered here, and forgotten whenever such a change is made:

* the catalog copy of this process calls ``changing`` inside the
  transaction that writes a change.  From then until that transaction's own
  notification comes back, placements read the database and remember
  nothing, so a change is never hidden, not even between its commit and its
  notification.  A transaction that rolls back sends no notification: its
  hold ends after ``hold_seconds``, and its retry takes a new one.
* every replica LISTENs on ``CHANGED_CHANNEL`` (the notification is sent at
  commit) and forgets everything when a change commits anywhere, so a
  replica that did not apply the change lags it by that notification only.
* nothing is remembered while the listener is not listening, everything is
  forgotten when it (re)connects (notifications may have been missed), and
  nothing is trusted for longer than ``ttl_seconds`` in any case.

A fill races a change: it may read the old terms, then the change commits
and its notification empties the memory, then the fill stores what it read.
So every forget bumps an epoch, and a fill stores its answer only if no
forget happened while it read (as ``shared.token_generations`` does).

Offerings unknown locally are not remembered: a mistyped or made-up id
costs a read, and never grows the memory.  Whether an agreement has expired
is decided at each placement's ``now`` from the remembered ``expires_at``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence

from services.orders import store
from services.orders.domain import Agreement, OfferingVersion
from shared.db import Connection, Pool
from shared.listening import Listener

CHANGED_CHANNEL = "orderable_terms_changed"

Terms = tuple[dict[str, OfferingVersion], dict[str, Agreement]]


class OrderableTerms:
    def __init__(
        self,
        pool: Pool,
        *,
        ttl_seconds: float = 30.0,
        hold_seconds: float = 10.0,
        max_offerings: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._hold = hold_seconds
        self._max_offerings = max_offerings
        self._clock = clock
        # offering id -> (its current version, the agreements it names, when read)
        self._known: dict[str, tuple[OfferingVersion, tuple[Agreement, ...], float]] = {}
        self._epoch = 0
        # This process's changes not yet seen committed (or rolled back): name -> since.
        self._changing: dict[str, float] = {}
        self._name = secrets.token_hex(8)
        self._changes = 0
        self.listener = Listener(
            pool, CHANGED_CHANNEL, self._changed, on_connect=self.forget_everything
        )

    async def read(self, conn: Connection, offering_ids: Sequence[str]) -> Terms:
        """What ``store.orderable_terms`` answers, from memory when it holds all of it."""
        now = self._clock()
        # Not listening, a change elsewhere could go unseen: then nothing is remembered.
        held = self.listener.listening.is_set() and not self._changes_pending(now)
        if held:
            remembered = self._remembered(offering_ids, now)
            if remembered is not None:
                return remembered
        epoch = self._epoch
        offerings, agreements = await store.orderable_terms(conn, offering_ids)
        if held and epoch == self._epoch:
            self._remember(offerings, agreements, now)
        return offerings, agreements

    async def changing(self, conn: Connection) -> None:
        """Called in a transaction that changes the terms, before it writes them."""
        self._changes += 1
        change = f"{self._name}:{self._changes}"
        self._changing[change] = self._clock()
        self.forget_everything()
        await conn.execute("SELECT pg_notify($1, $2)", CHANGED_CHANNEL, change)

    def forget_everything(self) -> None:
        self._epoch += 1
        self._known.clear()

    def _changed(self, change: str) -> None:
        self.forget_everything()
        self._changing.pop(change, None)

    def _changes_pending(self, now: float) -> bool:
        if self._changing:
            for change, since in list(self._changing.items()):
                if now - since >= self._hold:
                    del self._changing[change]
        return bool(self._changing)

    def _remembered(self, offering_ids: Sequence[str], now: float) -> Terms | None:
        offerings: dict[str, OfferingVersion] = {}
        agreements: dict[str, Agreement] = {}
        for offering_id in offering_ids:
            found = self._known.get(offering_id)
            if found is None or now - found[2] >= self._ttl:
                return None
            offerings[offering_id] = found[0]
            for agreement in found[1]:
                agreements[agreement.agreement_id] = agreement
        return offerings, agreements

    def _remember(
        self, offerings: dict[str, OfferingVersion], agreements: dict[str, Agreement], now: float
    ) -> None:
        if len(self._known) + len(offerings) > self._max_offerings:
            self._known.clear()
        for offering_id, offering in offerings.items():
            named = {c.agreement_id for c in offering.components if c.agreement_id is not None}
            self._known[offering_id] = (
                offering,
                tuple(agreements[a] for a in sorted(named) if a in agreements),
                now,
            )

    async def run(self) -> None:
        await self.listener.run()

    def stop(self) -> None:
        self.listener.stop()
