"""The front door's pure parts: the rate limit's arithmetic and what a public key must be."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable

import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given
from hypothesis import strategies as st

from shared.http.idempotency import KeySecret, require_unguessable
from shared.http.problems import HTTPProblem
from shared.http.rate_limit import RateLimit, RateLimiter


def test_a_burst_is_admitted_then_refused_with_how_long_to_wait() -> None:
    now = [0.0]
    limiter = RateLimiter(RateLimit(per_minute=6, burst=3), clock=lambda: now[0])
    for _ in range(3):
        limiter.admit("10.0.0.1")
    with pytest.raises(HTTPProblem) as refused:
        limiter.admit("10.0.0.1")
    assert refused.value.problem.status == 429
    assert refused.value.headers["Retry-After"] == "10"  # one request every 10 s
    limiter.admit("10.0.0.2")  # another address has its own bucket
    now[0] = 10.0
    limiter.admit("10.0.0.1")  # refilled by one
    with pytest.raises(HTTPProblem):
        limiter.admit("10.0.0.1")


def test_a_limit_of_zero_per_minute_is_no_limit() -> None:
    limiter = RateLimiter(RateLimit(per_minute=0, burst=0))
    for _ in range(1000):
        limiter.admit("10.0.0.1")


def test_the_limiter_forgets_the_least_recent_addresses_first() -> None:
    limiter = RateLimiter(RateLimit(per_minute=60, burst=1))
    limiter.MAX_CLIENTS = 2
    for address in ("a", "b", "c"):
        limiter.admit(address)
    limiter.admit("a")  # forgotten, so a fresh bucket


@given(st.sampled_from(["uuid", "token_urlsafe", "token_hex"]))
def test_random_keys_qualify(kind: str) -> None:
    key = {
        "uuid": lambda: str(uuid.uuid4()),
        "token_urlsafe": lambda: secrets.token_urlsafe(24),
        "token_hex": lambda: secrets.token_hex(16),
    }[kind]()
    require_unguessable(key)


@pytest.mark.parametrize(
    "key",
    ["1", "signup-1", "a" * 40, "00000000-0000-4000-8000-000000000000", "ab" * 20,
     "x" * 31, "key with spaces and more than thirty two chars", "ü" * 40],
)  # fmt: skip
def test_guessable_keys_do_not(key: str) -> None:
    with pytest.raises(HTTPProblem) as refused:
        require_unguessable(key)
    assert refused.value.problem.errors[0].field == "Idempotency-Key"


def test_a_key_digest_depends_on_the_secret_and_the_caller() -> None:
    one, other = KeySecret(b"s" * 32), KeySecret(b"t" * 32)
    key = str(uuid.uuid4())
    assert one.digest("anonymous", key) != other.digest("anonymous", key)
    assert one.digest("anonymous", key) != one.digest("cus_a", key)
    sealed = one.seal("anonymous", key, b"token")
    assert one.open("anonymous", key, sealed) == b"token"
    with pytest.raises(InvalidTag):
        other.open("anonymous", key, sealed)


def test_an_ipv6_client_cannot_escape_its_limit_by_changing_address_in_its_64() -> None:
    # A client holds a whole /64; one bucket per address would give it 2**64 buckets and
    # let it flush every other client's bucket out of the table.
    limiter = RateLimiter(RateLimit(per_minute=6, burst=2))
    limiter.admit("2001:db8:1:2::1")
    limiter.admit("2001:db8:1:2:ffff::2")
    with pytest.raises(HTTPProblem):
        limiter.admit("2001:db8:1:2:abcd:ef01:2345:6789")
    limiter.admit("2001:db8:1:3::1")  # the next /64 is someone else
    limiter.admit("::ffff:10.0.0.1")  # an IPv4-mapped address is that IPv4 address
    limiter.admit("10.0.0.1")
    with pytest.raises(HTTPProblem):
        limiter.admit("::ffff:10.0.0.1")
    limiter.admit("unknown")  # not an address at all is still one bucket


@pytest.mark.parametrize("kind", ["uuid", "token_urlsafe", "token_hex"])
def test_random_keys_qualify_many_times(kind: str) -> None:
    # The pattern checks must not refuse a client's honest random key by bad luck.
    makers: dict[str, Callable[[], str]] = {
        "uuid": lambda: str(uuid.uuid4()),
        "token_urlsafe": lambda: secrets.token_urlsafe(24),
        "token_hex": lambda: secrets.token_hex(16),
    }
    make = makers[kind]
    for _ in range(2000):
        require_unguessable(make())
