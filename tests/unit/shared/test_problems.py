"""problems: msgspec's error locations become the field names clients see; refusals their status."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import Conflict, Contended, DomainError, NotAllowed, NotFound, RuleViolated
from shared.http.app import problem_of
from shared.http.problems import (
    PROBLEM_CONTENT_TYPE,
    FieldError,
    HTTPProblem,
    field_of,
    from_validation_error,
    invalid,
    problem_response,
)


class Line(msgspec.Struct, forbid_unknown_fields=True):
    offering_id: str
    quantity: int


class Order(msgspec.Struct, forbid_unknown_fields=True):
    lines: list[Line]
    note: str = ""
    tags: dict[str, int] = {}


def validation_error(document: bytes) -> msgspec.ValidationError:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.json.decode(document, type=Order)
    return caught.value


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (b'{"lines": [{"offering_id": "o", "quantity": "2"}]}', "lines[0].quantity"),
        (
            b'{"lines": [{"offering_id": "o", "quantity": 1}, {"offering_id": 5, "quantity": 1}]}',
            "lines[1].offering_id",
        ),
        (b'{"lines": [{"offering_id": "o"}]}', "lines[0].quantity"),
        (b"{}", "lines"),
        (b'{"lines": [], "surprise": 1}', "surprise"),
        (b'{"lines": [{"offering_id": "o", "quantity": 1, "x": 1}]}', "lines[0].x"),
        (b'{"lines": {"a": 1}}', "lines"),
        (b'{"lines": [], "note": 7}', "note"),
        (b"[]", "body"),
    ],
)
def test_field_of_names_the_field(document: bytes, field: str) -> None:
    error = field_of(validation_error(document))
    assert error.field == field
    assert error.message
    assert " - at `$" not in error.message


def test_a_prefix_names_where_the_field_was() -> None:
    error = validation_error(b'{"lines": [{"offering_id": "o", "quantity": "2"}]}')
    assert field_of(error, "query").field == "query.lines[0].quantity"
    assert field_of(validation_error(b"[]"), "query").field == "query"


def test_from_validation_error_is_a_422_problem_naming_the_field() -> None:
    problem = from_validation_error(validation_error(b"{}")).problem
    assert problem.status == 422
    assert problem.errors == [FieldError("lines", "Object missing required field `lines`")]
    assert problem.detail.startswith("lines: ")
    assert problem.type == "urn:problem:marketplace:validation-failed"


def test_problem_response_is_problem_json() -> None:
    response = problem_response(invalid("cursor", "not a cursor"))
    assert response.status == 422
    assert response.content_type == PROBLEM_CONTENT_TYPE
    assert isinstance(response.body, bytes)
    body = msgspec.json.decode(response.body)
    assert body["errors"] == [{"field": "cursor", "message": "not a cursor"}]
    assert set(body) == {"type", "title", "status", "detail", "errors"}


def test_a_problem_without_field_errors_omits_the_list() -> None:
    response = problem_response(HTTPProblem(409, "Conflict", "taken"))
    assert isinstance(response.body, bytes)
    assert "errors" not in msgspec.json.decode(response.body)


@given(st.from_regex(r"[a-z][a-z_]{0,20}", fullmatch=True), st.integers(0, 50))
def test_any_nested_index_is_reported(name: str, index: int) -> None:
    error = msgspec.ValidationError(f"Expected `int`, got `str` - at `$.{name}[{index}].quantity`")
    assert field_of(error).field == f"{name}[{index}].quantity"


@pytest.mark.parametrize(
    ("refusal", "status"),
    [
        (NotFound("order o"), 404),
        (Conflict("the order is cancelled"), 409),
        (NotAllowed("no"), 403),
        (RuleViolated.single("lines", "empty"), 422),
        (Contended("the order changed 8 times"), 503),
    ],
)
def test_each_refusal_has_its_status(refusal: DomainError, status: int) -> None:
    assert problem_of(refusal).problem.status == status


def test_a_contended_change_is_told_to_try_again() -> None:
    response = problem_response(problem_of(Contended("the order changed 8 times")))
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
