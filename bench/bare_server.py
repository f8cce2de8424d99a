"""The raw limit: an aiohttp handler that does nothing but answer JSON."""

from __future__ import annotations

import sys

from aiohttp import web

from shared.runtime import new_event_loop


async def answer(_: web.Request) -> web.Response:
    return web.json_response({"items": [], "next_cursor": None})


def run_bare(app: web.Application) -> None:
    """Serve a bare baseline on ``argv[1]``, on the services' event loop so it compares."""
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        print=None,
        access_log=None,
        loop=new_event_loop(),
    )


def main() -> None:
    app = web.Application()
    app.router.add_get("/bare", answer)
    run_bare(app)


if __name__ == "__main__":
    main()
