"""The raw HTTP limit for placing orders: an aiohttp handler that reads a JSON body and answers."""

from __future__ import annotations

from aiohttp import web

from bench.bare_server import run_bare


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"id": "ord_bare", "status": "pending"}, status=201)


def main() -> None:
    app = web.Application()
    app.router.add_post("/bare", answer)
    run_bare(app)


if __name__ == "__main__":
    main()
