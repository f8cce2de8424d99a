"""Reading a bank statement sent as CSV: what a bank's export really looks like."""

from __future__ import annotations

import pytest

from services.settlement.http import read_bank_csv
from shared.http.problems import HTTPProblem

HEADER = b"reference,amount,booked_at\r\n"


def test_a_bom_quotes_and_crlf_read_as_plain_lines() -> None:
    raw = b"\xef\xbb\xbf" + HEADER + b'"MP-1","1940",2026-01-01T00:00:00Z\r\n\r\nMP-2,-5,x\r\n'
    assert read_bank_csv(raw) == {
        "lines": [
            {"reference": "MP-1", "amount": "1940", "booked_at": "2026-01-01T00:00:00Z"},
            {"reference": "MP-2", "amount": "-5", "booked_at": "x"},
        ]
    }


@pytest.mark.parametrize("amount", ["1e3", "12.50", "1_000", "\uff15", "\u0661\u0662", "+5", ""])
def test_an_amount_is_whole_minor_units_in_digits(amount: str) -> None:
    raw = HEADER + f"MP-1,{amount},2026-01-01T00:00:00Z\r\n".encode()
    with pytest.raises(HTTPProblem) as refused:
        read_bank_csv(raw)
    assert refused.value.problem.status == 422
    assert [e.field for e in refused.value.problem.errors] == ["lines[0].amount"]


def test_a_bad_row_is_named_by_its_line_not_counting_blank_rows() -> None:
    raw = HEADER + b"\r\nMP-1,5\r\n"
    with pytest.raises(HTTPProblem) as refused:
        read_bank_csv(raw)
    assert [e.field for e in refused.value.problem.errors] == ["lines[0]"]
