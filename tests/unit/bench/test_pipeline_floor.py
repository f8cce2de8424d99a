"""The floor's arithmetic: events per order, orders' worth of events, and the report's figures."""

from __future__ import annotations

import pytest

from bench.pipeline_cpu import BENCH_READS, Usage
from bench.pipeline_floor import (
    LEDGER_BATCH,
    Floor,
    FloorPart,
    OrderRows,
    events_per_order,
    ledger_rows,
    order_rows,
    orders_worth_of,
    rows_worth,
    spread,
)
from bench.pipeline_limits import KafkaLimit, Record
from bench.pipeline_load import Charged, Placed
from bench.pipeline_report import Run, StepResult, markdown, pipeline_ms, tier
from shared.contracts import fulfillments, orders


def _records(keys: list[str]) -> list[Record]:
    return [(key.encode(), b"{}", []) for key in keys]


def test_events_per_order_count_orders_by_the_order_topic_s_keys() -> None:
    published = {
        orders.TOPIC.name: _records(["o1", "o1", "o1", "o2", "o2"]),  # o2 not yet fulfilled
        fulfillments.TOPIC.name: _records(["p1"] * 9 + ["p2"] * 6),
    }
    assert events_per_order(published) == {
        orders.TOPIC.name: pytest.approx(2.5),
        fulfillments.TOPIC.name: pytest.approx(7.5),
    }
    assert events_per_order({orders.TOPIC.name: []}) == {orders.TOPIC.name: 0.0}


def test_an_orders_worth_of_events_goes_round_the_published_ones_again() -> None:
    records = _records(["a", "b", "c"])
    assert [r[0] for r in orders_worth_of(records, 2.5, 2)] == [b"a", b"b", b"c", b"a", b"b"]
    assert orders_worth_of([], 2.5, 3) == []


def test_a_total_is_spread_evenly_the_larger_shares_last() -> None:
    assert spread(8, 6) == [1, 1, 2, 1, 1, 2]  # the round's last answer emits the order's
    assert spread(6, 6) == [1] * 6
    assert spread(3, 2) == [1, 2]
    assert spread(0, 3) == [0, 0, 0]
    assert spread(5, 0) == []
    assert sum(spread(52, 11)) == 52


def test_rows_worth_rounds_the_orders_worth() -> None:
    assert rows_worth(4.6, 10) == 46
    assert rows_worth(4.66, 3) == 14
    assert rows_worth(0.0, 100) == 0


def test_what_an_order_writes_is_counted_from_what_the_pipeline_published() -> None:
    published: dict[str, list[Record]] = {
        orders.TOPIC.name: [(b"o1", b"x" * 100, []), (b"o1", b"x" * 300, [])],
        fulfillments.TOPIC.name: [(b"p1", b"x" * 200, [])] * 10,
    }
    rows = order_rows(published, entries=4.0, postings=16.0)
    assert rows == OrderRows(events=12.0, payload=200, entries=4.0, postings=16.0)
    # The placement writes four of the twelve; the answers the eight left.
    assert rows.answer_events() == [1, 1, 2, 1, 1, 2]
    assert order_rows({}, 0.0, 0.0).payload == 0
    assert OrderRows(3.0, 100, 0.0, 0.0).answer_events() == [0] * 6  # never below none


def test_the_ledger_s_rows_come_in_batches_of_orders_as_many_per_order_as_booked() -> None:
    rows = OrderRows(events=12.0, payload=0, entries=4.5, postings=17.0)
    batches = ledger_rows(rows, LEDGER_BATCH + 10)
    assert len(batches) == 2
    entries = [e for batch, _ in batches for e in batch]
    postings = [p for _, batch in batches for p in batch]
    assert len(entries) == round(4.5 * LEDGER_BATCH) + 45
    assert len(postings) == 17 * (LEDGER_BATCH + 10)
    assert {p[0] for p in postings} <= {e[0] for e in entries}
    assert len({e[3] for e in entries}) == LEDGER_BATCH + 10  # an order id each


def _part(name: str, cpu_seconds: float) -> FloorPart:
    return FloorPart(name, name, 1000, Usage(2.0, {"client": cpu_seconds}, 2.0))


def test_the_floor_is_the_sum_of_its_parts_per_order() -> None:
    floor = Floor([_part("HTTP", 3.0), _part("PostgreSQL", 10.0), _part("Kafka", 3.0)],
                  KafkaLimit(12_000, 5_000.0, 20_000.0))  # fmt: skip
    assert floor.ms_per_order() == pytest.approx(16.0)


def test_the_pipeline_s_cost_leaves_the_bench_s_own_reads_out() -> None:
    usage = Usage(10.0, {"orders": 4.0, "kafka": 1.0, BENCH_READS: 0.5}, 9.0)
    assert pipeline_ms(usage, 100) == pytest.approx(50.0)


def test_the_report_shows_the_cpu_per_order_the_floor_and_the_ceiling() -> None:
    run = Run(cores=2, seconds=4.0)
    run.floor = Floor([_part("HTTP", 4.0), _part("PostgreSQL", 12.0)], KafkaLimit(1, 1.0, 1.0))
    ids = [f"ord_{n}" for n in range(100)]
    placed = [Placed(due=0.0, latency=0.01, order_id=order_id) for order_id in ids]
    run.steps.append(StepResult.of(25.0, 4.0, placed, dict.fromkeys(ids, Charged(1.0, 2.0))))
    run.usage[25.0] = Usage(
        4.0, {"orders": 2.0, "postgres orders": 1.0, "kafka": 0.5, BENCH_READS: 0.3}, 4.0
    )
    text = markdown(run)
    assert "## Where each order's CPU goes" in text
    assert "| 25 | 25 | 25 | 35.0 | 2.2x |" in text  # the bench's reads left out
    assert "| **floor** | the parts together | **16.00** |" in text
    assert "2 cores ÷ 16.00 ms = **125 orders/s**" in text
    # The floor's parts here count only a client: all of it is Python.
    assert "| Python processes | 20.0 | 16.0 | 1.2x |" in text
    assert "| PostgreSQL | 10.0 | 0.0 | n/a |" in text


def test_components_fall_into_python_postgresql_or_the_broker() -> None:
    assert tier("orders") == "Python processes"
    assert tier("load generator and partners") == "Python processes"
    assert tier("postgres orders") == "PostgreSQL"
    assert tier("postgres other") == "PostgreSQL"
    assert tier("kafka") == "Kafka broker"
