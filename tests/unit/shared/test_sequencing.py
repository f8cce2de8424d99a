"""Per-aggregate sequencing decisions, as pure functions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shared.contracts.envelope import new_envelope
from shared.sequencing import Delivery, Verdict, plan, verdict
from tests.support.events import TEST_PRODUCER, Ping


def delivery(key: str, sequence: int | None, n: int = 0) -> Delivery:
    event = Ping(n=n)
    return Delivery(new_envelope(event, key=key, producer=TEST_PRODUCER, sequence=sequence), event)


def sequences(deliveries: list[Delivery]) -> list[int | None]:
    return [d.envelope.sequence for d in deliveries]


def test_strict_applies_the_next_skips_the_old_and_parks_what_is_ahead() -> None:
    assert verdict("strict", 3, 4) is Verdict.APPLY
    assert verdict("strict", 3, 3) is Verdict.DUPLICATE
    assert verdict("strict", 3, 1) is Verdict.DUPLICATE
    assert verdict("strict", 3, 5) is Verdict.PARK
    assert verdict("strict", 0, 1) is Verdict.APPLY
    assert verdict("strict", 0, 2) is Verdict.PARK


def test_latest_applies_anything_newer_and_never_parks() -> None:
    assert verdict("latest", 3, 4) is Verdict.APPLY
    assert verdict("latest", 3, 9) is Verdict.APPLY
    assert verdict("latest", 3, 3) is Verdict.STALE
    assert verdict("latest", 3, 2) is Verdict.STALE


def test_a_gap_filled_in_the_same_chunk_releases_the_parked_in_sequence_order() -> None:
    chunk = [delivery("o", 3), delivery("o", 2), delivery("o", 1), delivery("o", 4)]
    decided = plan("strict", {}, {}, chunk)
    assert sequences(decided.apply) == [1, 2, 3, 4]
    assert decided.park == []
    assert decided.released == []
    assert decided.positions == {"o": 4}


def test_a_gap_parks_its_successors_and_leaves_the_position() -> None:
    decided = plan("strict", {"o": 1}, {}, [delivery("o", 3), delivery("o", 4)])
    assert decided.apply == []
    assert sequences(decided.park) == [3, 4]
    assert decided.positions == {}


def test_the_missing_event_releases_what_was_parked_before() -> None:
    parked = {"o": {3: delivery("o", 3), 4: delivery("o", 4), 6: delivery("o", 6)}}
    decided = plan("strict", {"o": 1}, parked, [delivery("o", 2)])
    assert sequences(decided.apply) == [2, 3, 4]
    assert decided.released == [("o", 3), ("o", 4)]
    assert decided.positions == {"o": 4}
    assert parked["o"].keys() == {3, 4, 6}  # inputs untouched


def test_without_release_the_missing_event_applies_alone() -> None:
    """How the runner tells a failing released successor from the event that released it."""
    parked = {"o": {3: delivery("o", 3)}}
    decided = plan("strict", {"o": 1}, parked, [delivery("o", 2)], release=False)
    assert sequences(decided.apply) == [2]
    assert decided.released == []
    assert decided.positions == {"o": 2}


def test_an_event_applied_while_its_copy_waits_parked_takes_the_copy_out() -> None:
    """Parked, then redelivered once its turn came (a replay of offsets not committed yet).

    The copy applied from the topic leaves the parked one behind a position it
    can never follow: it must leave ``parked_events`` in the same transaction,
    or it waits there forever (an operator sees an event waiting for its own
    successor's number, and the parked gauge never empties).
    """
    for release in (True, False):
        parked = {"o": {3: delivery("o", 3)}}
        decided = plan("strict", {"o": 2}, parked, [delivery("o", 3)], release=release)
        assert sequences(decided.apply) == [3]
        assert decided.released == [("o", 3)]
        assert decided.park == []
        assert decided.positions == {"o": 3}


def test_stale_duplicates_and_unsequenced_events() -> None:
    chunk = [
        delivery("o", 2),  # applied already: redelivered
        delivery("o", 5),
        delivery("o", 5),  # a second event claiming a waiting number
        delivery("p", None),
        delivery("o", 3),
    ]
    decided = plan("strict", {"o": 2}, {}, chunk)
    assert sequences(decided.apply) == [None, 3]
    assert (decided.duplicate, decided.stale) == (1, 1)
    assert decided.stale_keys == ["o", "o"]
    assert sequences(decided.park) == [5]
    assert decided.positions == {"o": 3}


def test_strict_counts_a_redelivery_as_duplicate_latest_older_news_as_stale() -> None:
    """Strict keeps no dedupe row per event: its position says the event applied already.

    Latest consumers dedupe by event id before sequencing, so what reaches the
    plan at or below the position is an older event, superseded: stale.
    """
    waiting = delivery("o", 5)
    chunk = [delivery("o", 1), delivery("o", 3), waiting]
    decided = plan("strict", {"o": 3}, {"o": {5: waiting}}, chunk)
    assert decided.apply == []
    assert (decided.duplicate, decided.stale) == (3, 0)  # two applied, one parked already
    assert decided.park == []
    latest = plan("latest", {"o": 3}, {}, [delivery("o", 1), delivery("o", 3)])
    assert (latest.duplicate, latest.stale) == (0, 2)


def test_latest_keeps_the_newest_of_each_key() -> None:
    chunk = [delivery("a", 5), delivery("a", 4), delivery("b", 1), delivery("a", 9)]
    decided = plan("latest", {"a": 4}, {}, chunk)
    assert [(d.envelope.key, d.envelope.sequence) for d in decided.apply] == [
        ("a", 5),
        ("b", 1),
        ("a", 9),
    ]
    assert decided.stale == 1
    assert decided.positions == {"a": 9, "b": 1}


@given(st.permutations(list(range(1, 9))), st.integers(min_value=1, max_value=8))
def test_strict_applies_any_arrival_order_exactly_in_sequence(order: list[int], split: int) -> None:
    """However the events arrive, in however many chunks, each applies once and in order."""
    by_sequence = {s: delivery("o", s) for s in order}
    positions: dict[str, int] = {}
    parked: dict[str, dict[int, Delivery]] = {}
    applied: list[int | None] = []
    for chunk in (order[:split], order[split:]):
        decided = plan("strict", positions, parked, [by_sequence[s] for s in chunk])
        applied += sequences(decided.apply)
        positions = {**positions, **decided.positions}
        waiting = parked.get("o", {})
        for _, sequence in decided.released:
            del waiting[sequence]
        for d in decided.park:
            assert d.envelope.sequence is not None
            waiting[d.envelope.sequence] = d
        parked = {"o": waiting}
    assert applied == list(range(1, 9))
    assert parked == {"o": {}}


def test_an_unsequenced_event_after_its_keys_numbered_ones_is_stale() -> None:
    chunk = [delivery("o", None), delivery("o", 4), delivery("o", None), delivery("q", None)]
    decided = plan("strict", {"o": 3}, {}, chunk)
    assert [(d.envelope.key, d.envelope.sequence) for d in decided.apply] == [("o", 4), ("q", None)]
    assert decided.stale == 2


def test_latest_still_applies_an_unsequenced_event_after_numbered_ones() -> None:
    decided = plan("latest", {"a": 3}, {}, [delivery("a", None)])
    assert sequences(decided.apply) == [None]
