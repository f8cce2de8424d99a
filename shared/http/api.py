"""Typed endpoints: each route declares its body, query, reply and roles once.

The same declaration decodes and validates the request (msgspec), checks the
caller's role, replays ``Idempotency-Key`` POSTs, encodes the reply and
generates ``/openapi.json`` — so the documented schema is, by construction,
the one the handlers enforce.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import asyncpg
import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from asyncpg.pool import PoolConnectionProxy

from shared.db import Connection, Pool
from shared.errors import NotFound
from shared.http import idempotency
from shared.http.fields import ResourceId
from shared.http.idempotency import KeySecret
from shared.http.problems import (
    PROBLEM_CONTENT_TYPE,
    HTTPProblem,
    Problem,
    bad_request,
    forbidden,
    from_validation_error,
    invalid,
    unauthorized,
)
from shared.http.rate_limit import RateLimiter
from shared.http.server import Timeouts
from shared.tokens import InvalidToken, Principal, Role, TokenVerifier

log = logging.getLogger(__name__)

B = TypeVar("B")
Q = TypeVar("Q")


class RevocationCheck(Protocol):
    """Answers True when a principal's token generation has been superseded."""

    async def __call__(self, principal: Principal, /) -> bool: ...


DB_POOL = web.AppKey("db_pool", Pool)
VERIFIER = web.AppKey("token_verifier", TokenVerifier)
REVOCATIONS = web.AppKey("token_revocations", RevocationCheck)
KEY_SECRET = web.AppKey("idempotency_key_secret", KeySecret)
PUBLIC_RATE_LIMITER = web.AppKey("public_rate_limiter", RateLimiter)
PRINCIPAL_RATE_LIMITER = web.AppKey("principal_rate_limiter", RateLimiter)
FAILED_AUTH_RATE_LIMITER = web.AppKey("failed_auth_rate_limiter", RateLimiter)
TIMEOUTS = web.AppKey("timeouts", Timeouts)

PUBLIC: frozenset[Role] = frozenset()
ANY_ROLE: frozenset[Role] = frozenset({"operator", "partner", "customer"})

_encoder = msgspec.json.Encoder()
_PATH_PARAM = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)\}")
_JSON_TYPES = ("application/json", "application/problem+json")


class _NoBody(msgspec.Struct, forbid_unknown_fields=True):
    """What an endpoint without a body reads, when a client sends one anyway."""


# A client that sends `{}` to such an endpoint is right; one that sends fields
# believes they mean something, and one that sends broken JSON has a bug: both
# are told, as the endpoints with a body tell them, rather than silently obeyed.
_NO_BODY = msgspec.json.Decoder(_NoBody)
_UTF8 = ("utf-8", "utf8")
_DIGITS = re.compile(r"^[0-9]{1,18}$")

AfterCommit = Callable[[], object]


@dataclass(frozen=True)
class Reply:
    """A reply whose status differs from the endpoint's default."""

    status: int
    body: msgspec.Struct | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Call(Generic[B, Q]):
    """One request, decoded: what a handler needs and nothing of aiohttp's."""

    request: web.Request
    principal: Principal | None
    body: B
    query: Q
    _bound_connection: Connection | None = None
    _after_commit: list[AfterCommit] = field(default_factory=list)

    def path(self, name: str) -> str:
        return self.request.match_info[name]

    def path_id(self, name: str, what: str) -> str:
        """An id in the path, checked for shape: a malformed one simply does not exist."""
        value = self.path(name)
        try:
            msgspec.convert(value, ResourceId)
        except msgspec.ValidationError:
            # Escaped: a malformed id may hold NUL or bidi controls, echoed to a client.
            raise NotFound(f"{what} {value[:64]!a}") from None
        return value

    @property
    def caller(self) -> Principal:
        if self.principal is None:
            raise unauthorized("this endpoint needs a bearer token")
        return self.principal

    def after_commit(self, callback: AfterCommit) -> None:
        """Run ``callback`` once the request's unit of work has committed, never before.

        Work that announces committed data (a cache to forget, a signal to
        another loop) belongs here: code after a ``transaction()`` block may
        still be inside an outer transaction (under an Idempotency-Key), and a
        request that fails or is replayed commits nothing, so runs nothing.
        A callback may be a coroutine function; its failure is logged, since
        the data is committed by then.
        """
        self._after_commit.append(callback)

    async def _committed(self) -> None:
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            try:
                outcome = callback()
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("after-commit work failed", extra={"path": self.request.path})

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A connection without a transaction of its own (under an Idempotency-Key, the key's).

        For reads, and for a unit of work that writes in one statement, which
        commits whole by itself: BEGIN and COMMIT would only add round trips.
        """
        if self._bound_connection is not None:
            yield self._bound_connection
            return
        pool = self.request.app[DB_POOL]
        conn = await pool.acquire()
        try:
            yield conn
        finally:
            _give_back(pool, conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """The request's unit of work.

        Under an Idempotency-Key the transaction is the one that also stores
        the reply, so the effect and its replay record commit together, and
        ``after_commit`` work waits for that outer commit.
        """
        if self._bound_connection is not None:
            yield self._bound_connection
            return
        async with self.request.app[DB_POOL].acquire() as conn, conn.transaction():
            yield conn
        await self._committed()


# Connections being given back to the pool, kept referenced until they are.
_GIVING_BACK: set[asyncio.Task[None]] = set()


def _give_back(pool: Pool, conn: PoolConnectionProxy[asyncpg.Record]) -> None:
    """Release ``conn`` to ``pool`` without making the reply wait for it.

    asyncpg's release runs as a task of its own (shielded from cancellation),
    so awaiting it costs the request two more turns of the event loop, which
    under load are milliseconds each and showed in placement's p99.  Nothing
    the reply says depends on it: the statements have completed, and an open
    transaction is still rolled back before the connection is reused.
    """
    task = asyncio.get_running_loop().create_task(pool.release(conn))
    _GIVING_BACK.add(task)
    task.add_done_callback(_given_back)


def _given_back(task: asyncio.Task[None]) -> None:
    _GIVING_BACK.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("a connection could not be given back", exc_info=task.exception())


Handler = Callable[[Call[Any, Any]], Awaitable[msgspec.Struct | Reply]]
# Reads a body sent in another media type (e.g. text/csv) into the plain
# Python shape of the endpoint's body type; msgspec then validates it as if it
# had come as JSON, so both media types obey one schema.
BodyReader = Callable[[bytes], Any]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    roles: frozenset[Role]
    body: type | None
    query: type | None
    response: type | None
    status: int
    tag: str
    shows_secret: bool
    readers: Mapping[str, BodyReader] = field(default_factory=dict)

    @property
    def public(self) -> bool:
        return not self.roles


class Api:
    def __init__(self, title: str, version: str = "1.0.0") -> None:
        self.title = title
        self.version = version
        self.endpoints: list[Endpoint] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        roles: frozenset[Role],
        body: type | None = None,
        query: type | None = None,
        response: type | None = None,
        status: int = 200,
        tag: str = "default",
        shows_secret: bool = False,
        also_accepts: Mapping[str, BodyReader] | None = None,
    ) -> Callable[[Handler], Handler]:
        """``shows_secret``: the reply carries a token; an Idempotency-Key replays it briefly."""

        def register(handler: Handler) -> Handler:
            self.endpoints.append(
                Endpoint(
                    method,
                    path,
                    handler,
                    summary,
                    roles,
                    body,
                    query,
                    response,
                    status,
                    tag,
                    shows_secret,
                    dict(also_accepts or {}),
                )
            )
            return handler

        return register

    def install(self, app: web.Application) -> None:
        for endpoint in self.endpoints:
            if endpoint.method == "GET":  # GET routes answer HEAD too
                app.router.add_get(endpoint.path, _aiohttp_handler(endpoint))
            else:
                app.router.add_route(endpoint.method, endpoint.path, _aiohttp_handler(endpoint))


_SUPERSEDED = "the token was replaced by a newer one"


def identify(request: web.Request) -> Principal:
    """Who the bearer token says the caller is (its signature checked, not its generation)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("send 'Authorization: Bearer <token>'")
    if not token.isascii():  # tokens are ASCII; anything else could not even be hashed
        raise unauthorized("the token is not valid")
    # A refused token names nobody to count it against, and each costs a signature
    # check: refusals are counted per client address, in a bucket of their own, and
    # an address whose bucket is empty gets no more checks until it refills.  Tokens
    # verified before (and the operator's) are never held back.
    refusals = request.app[FAILED_AUTH_RATE_LIMITER]
    address = request.remote or "unknown"
    try:
        return request.app[VERIFIER].verify(
            token.strip(), before_signature_check=lambda: refusals.check(address)
        )
    except InvalidToken as exc:
        refusals.admit(address)
        raise unauthorized(str(exc)) from None


async def superseded(request: web.Request, principal: Principal) -> bool:
    return principal.role != "operator" and await request.app[REVOCATIONS](principal)


def _aiohttp_handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    body_decoder: msgspec.json.Decoder[Any] | None = (
        msgspec.json.Decoder(endpoint.body) if endpoint.body is not None else None
    )
    integer_params = _integer_fields(endpoint.query) if endpoint.query else frozenset()

    async def handle(request: web.Request) -> web.StreamResponse:
        principal = None
        stale = False
        if endpoint.public:
            request.app[PUBLIC_RATE_LIMITER].admit(request.remote or "unknown")
        else:
            principal = identify(request)
            # Counted before anything costs a query. The operator is the marketplace's
            # own tooling (payout runs, onboarding in bulk), not a tenant to keep in check.
            # One bucket per token generation: a token rotated away (it leaked) is not
            # known stale until the query below, and whoever still sends it must not
            # spend the bucket of the token that replaced it.
            if principal.role != "operator":
                request.app[PRINCIPAL_RATE_LIMITER].admit(
                    f"{principal.subject}#{principal.generation}"
                )
            stale = await superseded(request, principal)
        key = request.headers.get(idempotency.HEADER) if endpoint.method == "POST" else None
        if stale and key is None:
            raise unauthorized(_SUPERSEDED)
        if principal is not None and principal.role not in endpoint.roles:
            raise forbidden(f"a {principal.role} cannot {endpoint.summary.lower()}")
        if key is not None:
            idempotency.check_shape(key)
            if principal is None:
                idempotency.require_unguessable(key)
        raw_body = await _read_body(request)
        keyed = None
        if key is not None:
            keyed = idempotency.KeyedRequest(
                subject=principal.subject if principal else "anonymous",
                key=key,
                fingerprint=idempotency.fingerprint(request.method, request.path_qs, raw_body),
                shows_secret=endpoint.shows_secret,
            )
        if stale:
            assert keyed is not None  # a stale token without a key was refused above
            # A retry of a request that succeeded (a rotation whose reply was lost) gets
            # that reply, though its success superseded the very token it was sent with.
            # A superseded token may be the leaked one it was rotated for, so the key is
            # then the only secret: a guessable one replays nothing, as on a public door.
            if not idempotency.unguessable(keyed.key):
                raise unauthorized(_SUPERSEDED)
            replay = await idempotency.replay_stored(
                request.app[DB_POOL], request.app[KEY_SECRET], keyed
            )
            if replay is None:
                raise unauthorized(_SUPERSEDED)
            return replay
        body: Any = None
        if body_decoder is not None and request.content_type in endpoint.readers:
            body = _read_other_media(request, endpoint, raw_body)
        elif body_decoder is not None:
            body = _decode_body(request, body_decoder, raw_body, accepted=tuple(endpoint.readers))
        elif raw_body.strip():
            _decode_body(request, _NO_BODY, raw_body)
        query: Any = (
            _decode_query(request, endpoint.query, integer_params) if endpoint.query else None
        )
        call: Call[Any, Any] = Call(request, principal, body, query)
        if keyed is None:
            response = await _respond(endpoint, call, None)
        else:
            response, fresh = await idempotency.run_once(
                request.app[DB_POOL],
                request.app[KEY_SECRET],
                keyed,
                lambda conn: _respond(endpoint, call, conn),
            )
            if not fresh:
                return response
        if response.status < 400:
            await call._committed()
        return response

    return handle


async def _read_body(request: web.Request) -> bytes:
    declared = request.content_length
    if declared is not None and declared > request.client_max_size:
        # Known from the head: waiting for the body would only hold the connection open.
        raise HTTPProblem(413, "Request body too large", "the request body is larger than allowed")
    try:
        async with asyncio.timeout(request.app[TIMEOUTS].body_seconds):
            return await request.read()
    except TimeoutError:
        raise HTTPProblem(
            408, "Request timeout", "the request body did not arrive in time"
        ) from None
    except HttpProcessingError:
        raise bad_request("the request body is not valid HTTP/1.1 framing") from None


async def _respond(
    endpoint: Endpoint, call: Call[Any, Any], conn: Connection | None
) -> web.Response:
    call._bound_connection = conn
    reply = await endpoint.handler(call)
    if isinstance(reply, Reply):
        status, body, headers = reply.status, reply.body, reply.headers
    else:
        status, body, headers = endpoint.status, reply, {}
    if body is None:
        return web.Response(status=status, headers=headers)
    return web.Response(
        status=status, body=_encoder.encode(body), content_type="application/json", headers=headers
    )


def _decode_body(
    request: web.Request,
    decoder: msgspec.json.Decoder[Any],
    raw_body: bytes,
    *,
    accepted: tuple[str, ...] = (),
) -> Any:
    content_type = request.headers.get("Content-Type")
    if content_type is not None and request.content_type not in _JSON_TYPES:
        # Name every type the endpoint reads, or a CSV-reading one misleads its client.
        wanted = " or ".join(("application/json", *accepted))
        raise HTTPProblem(
            415,
            "Unsupported media type",
            f"send {wanted}, not {request.content_type[:80]!a}",
        )
    if request.charset is not None and request.charset.lower() not in _UTF8:
        raise HTTPProblem(415, "Unsupported media type", "JSON is read as UTF-8 only")
    if not raw_body:
        raise bad_request("the request needs a JSON body")
    try:
        body = decoder.decode(raw_body)
    except msgspec.ValidationError as exc:
        raise from_validation_error(exc) from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise bad_request("the body is not valid UTF-8") from None
    if b"\\u0000" in raw_body:  # JSON can only carry NUL escaped
        where = _nul_at(msgspec.json.decode(raw_body))
        if where is not None:
            raise invalid(where or "body", "must not contain NUL characters")
    return body


def _read_other_media(request: web.Request, endpoint: Endpoint, raw_body: bytes) -> Any:
    if not raw_body:
        raise bad_request("the request needs a body")
    plain = endpoint.readers[request.content_type](raw_body)
    where = _nul_at(plain)
    if where is not None:
        raise invalid(where or "body", "must not contain NUL characters")
    try:
        return msgspec.convert(plain, type=endpoint.body, strict=False)
    except msgspec.ValidationError as exc:
        raise from_validation_error(exc) from None


def _nul_at(value: Any, path: str = "") -> str | None:
    """The path of the first string (or key) holding NUL, as ``field_of`` names fields."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where
            found = _nul_at(item, where)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_at(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _integer_fields(query_type: type) -> frozenset[str]:
    info = msgspec.inspect.type_info(query_type)
    assert isinstance(info, msgspec.inspect.StructType)
    return frozenset(
        f.encode_name for f in info.fields if isinstance(f.type, msgspec.inspect.IntType)
    )


def _decode_query(request: web.Request, query_type: type, integers: frozenset[str]) -> Any:
    params: dict[str, str] = {}
    for name in request.query:
        values = request.query.getall(name)
        if len(values) > 1:
            raise from_validation_error(
                msgspec.ValidationError(f"given more than once - at `$.{name}`"), "query"
            )
        if "\x00" in values[0]:
            raise invalid(f"query.{name}", "must not contain NUL characters")
        # Lenient conversion would read "1e2" or full-width digits as a number; a count is 0-9.
        if name in integers and not (values[0].isascii() and _DIGITS.match(values[0])):
            raise invalid(f"query.{name}", "must be a whole number written in digits 0-9")
        params[name] = values[0]
    try:
        return msgspec.convert(params, type=query_type, strict=False)
    except msgspec.ValidationError as exc:
        raise from_validation_error(exc, "query") from None


def openapi_document(api: Api, extra_paths: dict[str, Any] | None = None) -> dict[str, Any]:
    types: list[Any] = [Problem]
    for endpoint in api.endpoints:
        types += [t for t in (endpoint.body, endpoint.response) if t is not None]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    ref_of = dict(zip(types, schemas, strict=True))
    problem_ref = {PROBLEM_CONTENT_TYPE: {"schema": ref_of[Problem]}}
    paths: dict[str, Any] = dict(extra_paths or {})
    for endpoint in api.endpoints:
        operation: dict[str, Any] = {
            "summary": endpoint.summary,
            "operationId": endpoint.handler.__name__,
            "tags": [endpoint.tag],
            "parameters": _parameters(endpoint),
            "responses": {
                str(endpoint.status): _success(endpoint, ref_of),
                "default": {"description": "A problem (RFC 9457)", "content": problem_ref},
            },
            "security": [] if endpoint.public else [{"bearerAuth": []}],
        }
        if endpoint.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": ref_of[endpoint.body]},
                    **{media: {"schema": {"type": "string"}} for media in endpoint.readers},
                },
            }
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": api.title, "version": api.version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }


def _success(endpoint: Endpoint, ref_of: dict[Any, Any]) -> dict[str, Any]:
    if endpoint.response is None:
        return {"description": "Done"}
    return {
        "description": endpoint.summary,
        "content": {"application/json": {"schema": ref_of[endpoint.response]}},
    }


def _parameters(endpoint: Endpoint) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(endpoint.path)
    ]
    if endpoint.query is not None:
        for query_field in msgspec.structs.fields(endpoint.query):
            parameters.append(
                {
                    "name": query_field.encode_name,
                    "in": "query",
                    "required": query_field.required,
                    "schema": msgspec.json.schema(query_field.type),
                }
            )
    if endpoint.method == "POST":
        parameters.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        )
    return parameters
