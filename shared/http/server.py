"""The connection layer under the app: what happens before a request reaches a route.

aiohttp answers requests it cannot parse (oversized or malformed headers,
unknown methods, bad versions) itself, with a ``400 text/plain`` that repeats
the offending line and an ERROR traceback in the log.  That line can be an
``Authorization`` header, so a bearer token would reach both.  Here such
requests answer problem+json naming only what kind of error it was, and log
one WARNING line with no header value and no traceback.

Slow clients are bounded too: a connection must deliver its request head
within ``header_timeout`` of opening or of its previous reply (aiohttp's
keep-alive timer closes it otherwise, and the same bound closes idle
keep-alive connections); the body's read time is bounded per request by the
route layer (``body_timeout``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine, InvalidHeader, LineTooLong
from aiohttp.web_protocol import RequestHandler

from shared.http.problems import HTTPProblem, problem_response

log = logging.getLogger(__name__)

SERVER_NAME = "marketplace"


@dataclass(frozen=True)
class Timeouts:
    header_seconds: float = 10.0
    body_seconds: float = 30.0


def _what_went_wrong(exc: BaseException | None) -> str:
    # Fixed phrases only: aiohttp's own messages quote the raw line, header values included.
    if isinstance(exc, LineTooLong):
        return "the request line or a header is longer than allowed"
    if isinstance(exc, BadHttpMethod):
        return "the request method is not one this service understands"
    if isinstance(exc, BadStatusLine):
        return "the request line is not valid HTTP/1.1"
    if isinstance(exc, InvalidHeader):
        return "a request header is not valid"
    return "the request is not valid HTTP/1.1"


class _FrontDoorProtocol(RequestHandler):
    def skip_lingering(self) -> None:
        # The connection closes after this reply (it was force_closed), so this only
        # affects the one request.
        self._lingering_time = 0.0

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("a reply was already under way; the connection is dropped")
        if status >= 500:
            log.error("request failed before reaching a route", exc_info=exc)
            problem = HTTPProblem(
                status, "Internal error", "the service failed; it has been logged"
            )
        else:
            detail = _what_went_wrong(exc)
            log.warning(
                "unparseable request refused",
                extra={"status": status, "error_class": type(exc).__name__, "detail": detail},
            )
            problem = HTTPProblem(status, "Malformed request", detail)
        response = problem_response(problem)
        response.headers["Server"] = SERVER_NAME
        response.force_close()
        return response


def close_without_reading_body(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Close the connection after ``response`` without draining the rest of the body.

    aiohttp drains an unread body for ``lingering_time`` after any reply, kept or
    not, so a client could hold a connection that long per refused request.  For
    a reply that refuses the body itself (too late, too large, over the limit)
    nothing in the body can matter.
    """
    response.force_close()
    protocol = request.protocol
    if isinstance(protocol, _FrontDoorProtocol):
        protocol.skip_lingering()


class _FrontDoorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _FrontDoorProtocol(self, loop=self._loop, **self._kwargs)


class FrontDoorRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer parse errors as problems, with timeouts."""

    def __init__(self, app: web.Application, *, timeouts: Timeouts, **kwargs: Any) -> None:
        super().__init__(
            app,
            # A connection that sends no complete request head in time is closed by this timer.
            keepalive_timeout=timeouts.header_seconds,
            # After a reply sent before the body was read (a 401, a 408), what is left of the
            # body is read and dropped for this long at most, then the connection is closed.
            lingering_time=timeouts.body_seconds,
            **kwargs,
        )

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds its Server here with everything the app configured; only the
        # protocol it hands each connection changes.
        server.__class__ = _FrontDoorServer
        return server
