"""The scale-out bench's own rules: which step counts, which round is kept, who gets a request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.orders_place import Step
from bench.scale_out import Cpu, OrdersRun, SettlementRun, best_catch_up, round_robin, table


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


def test_the_table_sets_each_figure_beside_its_ratio_and_says_none_when_nothing_kept_up() -> None:
    one, two = OrdersRun(1, partitions=[12]), OrdersRun(2, partitions=[6, 6])
    one.steps = [step(100, 100, 20)]
    one.cpu = {100: Cpu(service=0.4, client=0.1, machine=0.9)}
    two.steps = [step(100, 60, 900)]  # behind: nothing kept up with
    one.relay_per_s, two.relay_per_s = 4000.0, 5000.0
    ledgers = {n: settled(n, 3000.0 * n) for n in (1, 2)}
    for n, ledger in ledgers.items():
        ledger.cpu = Cpu(service=0.3 * n, client=0.0, machine=1.0)
        ledger.partitions = [6] if n == 1 else [3, 3]
    rows = {line.split(" | ")[0].strip("| "): line for line in table({1: one, 2: two}, ledgers)}
    assert rows["orders placed/s kept up with (any p99)"].endswith("| 100 (p99 20 ms) | none | - |")
    assert rows["orders placed/s at most, any step (kept up or not)"].endswith(
        "| 100 | 60 | 0.60 |"
    )
    assert rows["there: their CPU per placement, ms"].endswith("| 4.00 | - | - |")
    assert rows["orders relay, outbox events/s"].endswith("| 4,000 | 5,000 | 1.25 |")
    assert rows["settlement catch-up, events/s"].endswith("| 3,000 | 6,000 | 2.00 |")
    assert rows["events per second of their CPU"].endswith("| 10,000 | 10,000 | 1.00 |")
    assert rows["partitions per member of `settlement-ledger`"].endswith("| 6 | 3+3 | |")
