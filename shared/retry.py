"""The one retry policy: capped exponential backoff with jitter.

Every loop that tries again (consumers, the relay, listeners, start-up) asks
this policy how long to wait, so backoff behaves the same everywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` bounds retries where a bound applies; backoff is always capped."""

    max_attempts: int = 5
    first_backoff: float = 0.1
    max_backoff: float = 5.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``: in [ceiling/2, ceiling]."""
        ceiling: float = min(self.max_backoff, self.first_backoff * 2.0 ** (min(attempt, 64) - 1))
        # Jitter keeps replicas that failed together from retrying in lockstep.
        return ceiling / 2 + random.uniform(0, ceiling / 2)
