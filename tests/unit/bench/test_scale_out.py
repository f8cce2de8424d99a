"""The scale-out bench's own rules: which step counts, which round is kept, who gets a request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.orders_place import Step
from bench.scale_out import OrdersRun, SettlementRun, best_catch_up, round_robin


def step(rate: float, achieved: float, p99_ms: float, errors: int = 0) -> Step:
    return Step(rate=rate, achieved=achieved, p50=0.005, p99=p99_ms / 1000, errors=errors)


def test_the_best_step_is_the_fastest_kept_up_with_within_the_budget_or_at_any_p99() -> None:
    run = OrdersRun(1)
    run.steps = [
        step(50, 50, 20),
        step(100, 99, 80),  # kept up, over the p99 budget
        step(150, 150, 30, errors=1),  # an error: not kept up with
        step(200, 150, 40),  # behind: 75 % of offered
    ]
    assert run.best(within_budget=True) == run.steps[0]
    assert run.best(within_budget=False) == run.steps[1]


def test_no_step_kept_up_with_gives_none() -> None:
    run = OrdersRun(2)
    run.steps = [step(25, 20, 10)]
    assert run.best(within_budget=False) is None


def settled(processes: int, per_s: float, postings: int = 900) -> SettlementRun:
    return SettlementRun(processes, per_s=per_s, postings=postings, balanced=True)


def test_each_count_keeps_its_fastest_round_and_every_rate() -> None:
    best = best_catch_up([settled(1, 4000), settled(2, 3000), settled(2, 4500), settled(1, 3800)])
    assert {n: r.per_s for n, r in best.items()} == {1: 4000, 2: 4500}
    assert best[1].rounds == [4000, 3800]
    assert best[2].rounds == [3000, 4500]
    assert all(r.balanced for r in best.values())


def test_rounds_that_booked_different_postings_do_not_agree() -> None:
    best = best_catch_up([settled(1, 4000), settled(2, 4100, postings=901)])
    assert not any(r.balanced for r in best.values())


async def test_requests_go_to_each_process_in_turn() -> None:
    seen: list[str] = []

    def to(name: str) -> Callable[[], Awaitable[bool]]:
        async def fire() -> bool:
            seen.append(name)
            return True

        return fire

    fire = round_robin([to("orders-1"), to("orders-2")])
    for _ in range(4):
        assert await fire()
    assert seen == ["orders-1", "orders-2", "orders-1", "orders-2"]
