"""An Idempotency-Key's request is recognised by what it asks, not by its bytes."""

from __future__ import annotations

from shared.http.idempotency import fingerprint


def test_a_json_body_in_other_key_order_and_whitespace_is_the_same_request() -> None:
    compact = b'{"lines":[{"offering_id":"off_1","quantity":2}]}'
    pretty = b'{\n  "lines": [ {"quantity": 2, "offering_id": "off_1"} ]\n}'
    assert fingerprint("POST", "/v1/orders", compact) == fingerprint("POST", "/v1/orders", pretty)


def test_another_value_path_or_method_is_another_request() -> None:
    body = b'{"lines":[{"offering_id":"off_1","quantity":2}]}'
    first = fingerprint("POST", "/v1/orders", body)
    assert first != fingerprint("POST", "/v1/orders", body.replace(b"2", b"3"))
    assert first != fingerprint("POST", "/v1/orders?x=1", body)
    assert first != fingerprint("PUT", "/v1/orders", body)
    # An array's order is content: lines in another order are another request.
    two = b'{"lines":[{"offering_id":"a","quantity":1},{"offering_id":"b","quantity":1}]}'
    swapped = b'{"lines":[{"offering_id":"b","quantity":1},{"offering_id":"a","quantity":1}]}'
    assert fingerprint("POST", "/v1/orders", two) != fingerprint("POST", "/v1/orders", swapped)


def test_a_body_that_is_not_json_is_compared_by_its_bytes() -> None:
    csv = b"reference,amount,booked_at\nPO-1,100,2026-11-22T00:00:00Z\n"
    assert fingerprint("POST", "/v1/reconciliations", csv) == fingerprint(
        "POST", "/v1/reconciliations", csv
    )
    assert fingerprint("POST", "/v1/reconciliations", csv) != fingerprint(
        "POST", "/v1/reconciliations", csv.replace(b"\n", b"\r\n")
    )
