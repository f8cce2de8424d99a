"""The aiohttp application every service starts from."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared import logs
from shared.db import TRANSIENT_DB_ERRORS, Pool
from shared.errors import Conflict, Contended, DomainError, NotAllowed, NotFound, RuleViolated
from shared.http.api import (
    DB_POOL,
    FAILED_AUTH_RATE_LIMITER,
    KEY_SECRET,
    PRINCIPAL_RATE_LIMITER,
    PUBLIC_RATE_LIMITER,
    REVOCATIONS,
    TIMEOUTS,
    VERIFIER,
    Api,
    RevocationCheck,
    openapi_document,
)
from shared.http.idempotency import KeySecret
from shared.http.problems import FieldError, HTTPProblem, bad_request, problem_response
from shared.http.rate_limit import RateLimit, RateLimiter
from shared.http.server import SERVER_NAME, Timeouts, close_without_reading_body
from shared.metrics import HTTP_LATENCY, HTTP_REQUESTS
from shared.tokens import TokenVerifier

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]
READINESS = web.AppKey("readiness_checks", list[tuple[str, ReadinessCheck]])

CORRELATION_HEADER = "X-Correlation-Id"
_CORRELATION_SHAPE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_RATE_LIMIT = RateLimit()
# 50 requests a second, 100 at once, per token subject: far above what a partner's
# integration needs, far below what would crowd other tenants out of the pool.
DEFAULT_PRINCIPAL_RATE_LIMIT = RateLimit(per_minute=3000, burst=100, per="caller")
# Refused tokens, per client address: 10 a second, 100 at once.  Generous for a
# fleet behind one address whose tokens expired together; past it, the address's
# tokens not verified before are refused (429) without a signature check.
DEFAULT_FAILED_AUTH_RATE_LIMIT = RateLimit(per_minute=600, burst=100)
DEFAULT_TIMEOUTS = Timeouts()

# Refusals of the body itself: what is left of it is not read, the connection closes.
_BODY_REFUSED = frozenset({408, 413, 429})

_STATUS_TITLES = {
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
    415: "Unsupported media type",
}


async def _never_revoked(_: Any) -> bool:
    return False


def create_app(
    *,
    api: Api,
    pool: Pool,
    verifier: TokenVerifier,
    readiness: Sequence[tuple[str, ReadinessCheck]],
    revocations: RevocationCheck = _never_revoked,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    key_secret: KeySecret | None = None,
    public_rate_limit: RateLimit = DEFAULT_RATE_LIMIT,
    principal_rate_limit: RateLimit = DEFAULT_PRINCIPAL_RATE_LIMIT,
    failed_auth_rate_limit: RateLimit = DEFAULT_FAILED_AUTH_RATE_LIMIT,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
) -> web.Application:
    """``key_secret``: replicas of one service must share it; random when not given."""
    app = web.Application(middlewares=[_observe], client_max_size=max_body_bytes)
    app[DB_POOL] = pool
    app[VERIFIER] = verifier
    app[REVOCATIONS] = revocations
    app[KEY_SECRET] = key_secret or KeySecret.random()
    app[PUBLIC_RATE_LIMITER] = RateLimiter(public_rate_limit)
    app[FAILED_AUTH_RATE_LIMITER] = RateLimiter(failed_auth_rate_limit)
    app[PRINCIPAL_RATE_LIMITER] = RateLimiter(principal_rate_limit, bucket_of=str)
    app[TIMEOUTS] = timeouts
    app[READINESS] = list(readiness)
    app.on_response_prepare.append(_conventional_headers)
    document = msgspec.json.encode(openapi_document(api, _operational_paths()))
    api.install(app)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app.router.add_get("/openapi.json", openapi)
    return app


async def _conventional_headers(_: web.Request, response: web.StreamResponse) -> None:
    # No versions for a scanner to match; replies carry tokens and personal data, keep them
    # out of every cache on the way.
    response.headers["Server"] = SERVER_NAME
    response.headers["Cache-Control"] = "no-store"


@web.middleware
async def _observe(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Correlation id, metrics and the one place where errors become problems."""
    sent = request.headers.get(CORRELATION_HEADER, "")
    # The one header value that reaches the log, so only in a shape that cannot carry a
    # secret's worth of surprise or forge a log line: otherwise a fresh id replaces it.
    correlation = sent if _CORRELATION_SHAPE.fullmatch(sent) else uuid.uuid4().hex
    token = logs.correlation_id.set(correlation)
    started = time.perf_counter()
    try:
        response = await _as_problem(request, handler)
    finally:
        logs.correlation_id.reset(token)
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "unmatched"
    HTTP_REQUESTS.labels(route_name, request.method, str(response.status)).inc()
    HTTP_LATENCY.labels(route_name, request.method).observe(time.perf_counter() - started)
    response.headers[CORRELATION_HEADER] = correlation
    return response


async def _as_problem(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except HTTPProblem as problem:
        response = problem_response(problem)
        if problem.problem.status in _BODY_REFUSED:
            close_without_reading_body(request, response)
        return response
    except ConnectionError as exc:
        if _client_gone(request):
            # The client went away mid-request (typically mid-body): its choice, not our error.
            log.info("client disconnected", extra={"path": request.path, "method": request.method})
            return problem_response(bad_request("the client disconnected"))
        return _unavailable(request, exc)
    except TRANSIENT_DB_ERRORS as exc:
        return _unavailable(request, exc)
    except DomainError as refusal:
        return problem_response(problem_of(refusal))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        title = _STATUS_TITLES.get(exc.status, exc.reason)
        detail = exc.reason if exc.status != 413 else "the request body is larger than allowed"
        response = problem_response(HTTPProblem(exc.status, title, detail, headers=_allow(exc)))
        if exc.status in _BODY_REFUSED:
            close_without_reading_body(request, response)
        return response
    except Exception:
        log.exception("unhandled error", extra={"path": request.path, "method": request.method})
        return problem_response(
            HTTPProblem(500, "Internal error", "the service failed; it has been logged")
        )


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _unavailable(request: web.Request, error: BaseException) -> web.Response:
    """The database (or another dependency) is unreachable: the service's trouble, not the
    client's, and likely brief, so a retry is invited rather than a bug reported."""
    log.warning(
        "dependency unavailable",
        extra={"path": request.path, "method": request.method, "error": type(error).__name__},
    )
    return problem_response(
        HTTPProblem(
            503,
            "Service unavailable",
            "a dependency of the service is unavailable; retry shortly",
            headers={"Retry-After": "1"},
        )
    )


def problem_of(refusal: DomainError) -> HTTPProblem:
    if isinstance(refusal, NotFound):
        return HTTPProblem(404, "Not found", str(refusal))
    if isinstance(refusal, Conflict):
        return HTTPProblem(409, "Conflict", str(refusal))
    if isinstance(refusal, Contended):
        return HTTPProblem(503, "Service unavailable", str(refusal), headers={"Retry-After": "1"})
    if isinstance(refusal, NotAllowed):
        return HTTPProblem(403, "Forbidden", str(refusal))
    if isinstance(refusal, RuleViolated):
        return HTTPProblem(
            422,
            "Validation failed",
            str(refusal),
            errors=[FieldError(v.field, v.message) for v in refusal.violations],
            slug="validation-failed",
        )
    return HTTPProblem(400, "Refused", str(refusal))


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    failures: dict[str, str] = {}
    for name, check in request.app[READINESS]:
        try:
            await check()
        except Exception as exc:
            failures[name] = type(exc).__name__
    if failures:
        return web.json_response({"status": "unavailable", "failing": failures}, status=503)
    return web.json_response({"status": "ready"})


async def _metrics(_: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def _operational_paths() -> dict[str, Any]:
    def plain(summary: str, codes: tuple[str, ...], media: str) -> dict[str, Any]:
        return {
            "get": {
                "summary": summary,
                "tags": ["operations"],
                "security": [],
                "responses": {
                    code: {"description": summary, "content": {media: {}}} for code in codes
                },
            }
        }

    return {
        "/healthz": plain("Process alive", ("200",), "application/json"),
        "/readyz": plain("Database and Kafka reachable", ("200", "503"), "application/json"),
        "/metrics": plain("Prometheus metrics", ("200",), "text/plain"),
        "/openapi.json": plain("This document", ("200",), "application/json"),
    }
