"""RetryPolicy: capped exponential backoff with jitter in [ceiling/2, ceiling]."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.retry import RetryPolicy


@given(
    first=st.floats(0.001, 10),
    cap=st.floats(0.001, 600),
    attempt=st.integers(1, 1000),
)
def test_backoff_stays_within_its_bounds(first: float, cap: float, attempt: int) -> None:
    policy = RetryPolicy(first_backoff=first, max_backoff=cap)
    ceiling = min(cap, first * 2.0 ** (attempt - 1))
    delay = policy.backoff(attempt)
    assert ceiling / 2 <= delay <= ceiling
    assert delay <= cap


def test_backoff_grows_until_the_cap() -> None:
    policy = RetryPolicy(first_backoff=0.1, max_backoff=5.0)
    ceilings = [max(policy.backoff(n) for _ in range(200)) for n in range(1, 10)]
    assert ceilings[0] <= 0.1
    assert ceilings[3] > 0.4  # 0.8 ceiling, so at least 0.4
    assert all(c <= 5.0 for c in ceilings)
    assert ceilings[-1] > 2.5
