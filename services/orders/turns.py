"""Changes of one order in this process take turns, each starting where the last left it.

Not what keeps changes correct: that is the version check of
``store.save_changes``, which holds across replicas.  This only spares it
work.  The three partners of an order answer at about the same moment, so
their changes read the same version of the order; without turns all but one
lose, read again and decide again, and half the answers paid a second read
and a second write.  With turns, a change first reads the order (that tells
which order a fulfilment belongs to, and whether the caller may change it),
then waits for the changes of that order already running here, and starts
from the state the last of them stored if that is newer than what it read.

A change hands its state on only when its statement committed by itself
(no transaction around it): a state written inside a transaction that later
rolls back would carry a version number the order may reach again with
other content.  The memory of an order lasts while changes of it wait; it
is dropped when the last one ends, so it holds only the orders being
changed right now.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from services.orders.store import Snapshot


@dataclass
class Turn:
    """One order's turns: whose it is, and the state the last change stored."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stored: Snapshot | None = None
    changes: int = 0

    def newest(self, read: Snapshot) -> Snapshot:
        """What to decide from: ``read``, or the state stored since it was read."""
        if self.stored is not None and self.stored.version > read.version:
            return self.stored
        return read


class OrderTurns:
    def __init__(self) -> None:
        self._orders: dict[str, Turn] = {}

    @asynccontextmanager
    async def turn(self, order_id: str) -> AsyncIterator[Turn]:
        turn = self._orders.setdefault(order_id, Turn())
        turn.changes += 1
        try:
            async with turn.lock:
                yield turn
        finally:
            turn.changes -= 1
            if turn.changes == 0:
                del self._orders[order_id]

    def __len__(self) -> int:
        return len(self._orders)
