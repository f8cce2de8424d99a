"""Token buckets: per client address on public endpoints, per principal behind a token.

A bucket per key: ``burst`` requests at once, refilled at ``per_minute``.
Over the limit a request answers 429 problem+json with ``Retry-After`` before
its body is read.  The buckets live in the process, so with N replicas behind
a balancer a client gets up to N times the limit.

Public endpoints count by address: the TCP peer (a proxy in front must be
trusted to do its own limiting, since ``X-Forwarded-For`` is whatever a client
writes).  An IPv6 client holds at least a /64, so that prefix is its address
here; otherwise it could take a fresh bucket per request and push everyone
else's out.  Authenticated endpoints count by the token's subject, once its
signature is checked, so one partner or customer flooding a service cannot
starve the others; the limit is generous, for a client running away rather
than a busy one.  Each token generation counts apart: a rotated-away token
still being sent spends its own bucket, not its replacement's.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from shared.http.problems import HTTPProblem


@dataclass(frozen=True)
class RateLimit:
    per_minute: float = 30.0
    burst: int = 10
    # Whom one bucket counts, for the refusal's text.
    per: str = "client"

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0


class RateLimiter:
    # Enough clients for a busy front door; the least recently seen are dropped first,
    # which at worst gives a dropped client a fresh bucket.
    MAX_CLIENTS = 100_000

    def __init__(
        self,
        limit: RateLimit,
        clock: Callable[[], float] = time.monotonic,
        *,
        bucket_of: Callable[[str], str] | None = None,
    ) -> None:
        """``bucket_of`` names the bucket a client counts in: by default its address's."""
        self._limit = limit
        self._clock = clock
        self._bucket_of = bucket_of or client_of
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def admit(self, client: str) -> None:
        """Take one request from ``client``'s bucket, or raise 429."""
        self._take(client, 1.0)

    def check(self, client: str) -> None:
        """Raise 429 if ``client``'s bucket is empty; take nothing from it."""
        self._take(client, 0.0)

    def _take(self, client: str, cost: float) -> None:
        if not self._limit.enabled:
            return
        client = self._bucket_of(client)
        now = self._clock()
        rate = self._limit.per_minute / 60.0
        tokens, seen = self._buckets.pop(client, (float(self._limit.burst), now))
        tokens = min(float(self._limit.burst), tokens + (now - seen) * rate)
        if tokens < 1.0:
            self._remember(client, tokens, now)
            retry_after = max(1, math.ceil((1.0 - tokens) / rate))
            raise HTTPProblem(
                429,
                "Too many requests",
                f"this endpoint allows {self._limit.burst} requests at once and"
                f" {self._limit.per_minute:g} a minute per {self._limit.per};"
                f" retry after {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
        self._remember(client, tokens - cost, now)

    def _remember(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.MAX_CLIENTS:
            self._buckets.popitem(last=False)


def client_of(address: str) -> str:
    """The part of a peer address one client controls: an IPv4 address, an IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # no zone ("fe80::1%eth0")
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
