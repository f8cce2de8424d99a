"""Schemathesis against a running service's own ``/openapi.json``, one way for every service.

Each documented operation is fuzzed with data that fits its schema and with data
that does not, with a real token of a role it admits; half of the cases aim at
resources that exist (``path_parameters`` plus the service's ``aim``), so the
handlers behind the refusals run too.  The checks: never a 5xx, and status,
content type and body as documented.  Schemathesis calls with blocking
``requests``; the service runs on the test's event loop, so callers run ``fuzz``
in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.http.api import Endpoint
from shared.tokens import Role

MAX_EXAMPLES = 50
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
OPERATIONAL = ("/healthz", "/readyz", "/metrics", "/openapi.json")

Operation = tuple[str, str, GenerationMode]
Aim = Callable[[schemathesis.Case[Any]], schemathesis.Case[Any]]


def roles_of(endpoints: Iterable[Endpoint]) -> dict[tuple[str, str], frozenset[Role]]:
    return {(e.method, e.path): e.roles for e in endpoints}


def operations(endpoints: Iterable[Endpoint]) -> list[Operation]:
    """Every route positively; negatively those that take any input to get wrong."""
    endpoints = list(endpoints)
    takes_input = sorted(
        (e.method, e.path)
        for e in endpoints
        if e.body is not None or e.query is not None or "{" in e.path or e.method == "POST"
    )
    return [
        *[(method, path, GenerationMode.POSITIVE) for method, path in sorted(roles_of(endpoints))],
        *[(method, path, GenerationMode.NEGATIVE) for method, path in takes_input],
        *[("GET", path, GenerationMode.POSITIVE) for path in OPERATIONAL],
    ]


def operation_ids(ops: Iterable[Operation]) -> list[str]:
    return [f"{method} {path} {mode}" for method, path, mode in ops]


def documented(schema: Any) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, described in schema.raw_schema["paths"].items()
        for method in described
    }


def fuzz(
    schema: Any,
    base_url: str,
    operation: Operation,
    *,
    token: str | None,
    existing: Mapping[str, str],
    aim: Aim = lambda case: case,
) -> None:
    method, path, mode = operation
    described = schema[path][method]
    in_path = {name: value for name, value in existing.items() if f"{{{name}}}" in path}
    strategy = st.one_of(
        described.as_strategy(generation_mode=mode),
        described.as_strategy(generation_mode=mode, path_parameters=in_path).map(aim),
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=strategy)
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS, timeout=15)

    run()
