"""The raw limit: an aiohttp handler that does nothing but answer JSON."""

from __future__ import annotations

import sys

from aiohttp import web


async def answer(_: web.Request) -> web.Response:
    return web.json_response({"items": [], "next_cursor": None})


def main() -> None:
    app = web.Application()
    app.router.add_get("/bare", answer)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
