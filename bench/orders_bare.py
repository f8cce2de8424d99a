"""The raw HTTP limit for placing orders: an aiohttp handler that reads a JSON body and answers."""

from __future__ import annotations

import sys

from aiohttp import web


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"id": "ord_bare", "status": "pending"}, status=201)


def main() -> None:
    app = web.Application()
    app.router.add_post("/bare", answer)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
