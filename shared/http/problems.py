"""RFC 9457 problem details: every error a client sees has this one shape."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import msgspec
from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"
_encoder = msgspec.json.Encoder()


class FieldError(msgspec.Struct, frozen=True):
    field: str
    message: str


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] = []


class HTTPProblem(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        errors: Sequence[FieldError] = (),
        slug: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.problem = Problem(
            type=f"urn:problem:marketplace:{slug or _slug(title)}",
            title=title,
            status=status,
            detail=detail,
            errors=list(errors),
        )
        self.headers = dict(headers or {})


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def problem_response(problem: HTTPProblem) -> web.Response:
    return web.Response(
        status=problem.problem.status,
        body=_encoder.encode(problem.problem),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=problem.headers,
    )


def bad_request(detail: str) -> HTTPProblem:
    return HTTPProblem(400, "Malformed request", detail)


def unauthorized(detail: str) -> HTTPProblem:
    return HTTPProblem(
        401, "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="marketplace"'}
    )


def forbidden(detail: str) -> HTTPProblem:
    return HTTPProblem(403, "Forbidden", detail)


def not_found(what: str) -> HTTPProblem:
    return HTTPProblem(404, "Not found", f"{what} does not exist")


def conflict(detail: str) -> HTTPProblem:
    return HTTPProblem(409, "Conflict", detail)


def invalid(field: str, message: str, detail: str | None = None) -> HTTPProblem:
    """422: the request was understood, but a field breaks a rule."""
    return HTTPProblem(
        422,
        "Validation failed",
        detail or f"{field}: {message}",
        errors=[FieldError(field, message)],
        slug="validation-failed",
    )


_LOCATION = re.compile(r" - at `\$(?P<path>[^`]*)`$")
# msgspec quotes the whole pattern, which tells a client nothing it can act on.
_PATTERN = re.compile(r"^Expected `str` matching regex '.*'$", re.DOTALL)
_NAMED_FIELD = re.compile(r"(?:missing required|contains unknown) field `(?P<name>[^`]+)`")


def field_of(error: msgspec.ValidationError, prefix: str = "") -> FieldError:
    """Turn msgspec's ``... - at `$.lines[0].quantity``` into a field name and message."""
    text = str(error)
    path = ""
    match = _LOCATION.search(text)
    if match:
        path = match.group("path")
        text = text[: match.start()]
    if _PATTERN.match(text):
        text = "Expected text of the allowed characters and form"
    named = _NAMED_FIELD.search(text)
    if named:
        path = f"{path}.{named.group('name')}"
    path = path.lstrip(".")
    if prefix:
        path = f"{prefix}.{path}" if path else prefix
    return FieldError(field=path or "body", message=text)


def from_validation_error(error: msgspec.ValidationError, prefix: str = "") -> HTTPProblem:
    field_error = field_of(error, prefix)
    return HTTPProblem(
        422,
        "Validation failed",
        f"{field_error.field}: {field_error.message}",
        errors=[field_error],
        slug="validation-failed",
    )
