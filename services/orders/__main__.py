"""``python -m services.orders``: orders, the fulfilment saga across partners, usage."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from services.orders import consumers, handlers
from services.orders.http import OrdersHttp, build_api
from services.orders.terms import OrderableTerms
from services.orders.turns import OrderTurns
from shared import account_generations
from shared.clock import Clock, utc_now
from shared.contracts import fulfillments, orders
from shared.service import Compose, Composition, Runtime, ServiceSettings, main
from shared.timers import TimerLoop

MIGRATIONS = Path(__file__).parent / "migrations"
# Orders refuses tokens a rotation superseded, from its own view of catalog.accounts.
EXTRA_MIGRATIONS = (account_generations.MIGRATIONS,)
# Its own topics, and the catalog's it reads (created if the catalog has not yet:
# a consumer of a topic that does not exist stops the service).
TOPICS = (orders.TOPIC, fulfillments.TOPIC, *consumers.CATALOG_TOPICS, *account_generations.TOPICS)


class OrdersSettings(ServiceSettings, kw_only=True):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/orders"
    http_port: int = 8082
    acceptance_deadline_seconds: float = 48 * 3600
    timer_poll_seconds: float = 1.0


def composer(clock: Clock = utc_now) -> Compose:
    """The service on one clock: the timer loop decides by it what is due, and the
    routes and the deadline handler stamp their changes with it, so a test that
    moves the clock moves all of them alike."""

    async def compose(runtime: Runtime) -> Composition:
        settings = runtime.settings
        if not isinstance(settings, OrdersSettings):
            raise TypeError("the orders service runs with OrdersSettings")
        terms = OrderableTerms(runtime.pool)
        turns = OrderTurns()
        api = build_api(
            OrdersHttp(
                acceptance_window=timedelta(seconds=settings.acceptance_deadline_seconds),
                clock=clock,
                terms=terms,
                turns=turns,
            )
        )
        catalog_copy = consumers.catalog_copy(
            bootstrap=settings.kafka_bootstrap,
            topic_prefix=settings.topic_prefix,
            pool=runtime.pool,
            producer=runtime.producer,
            terms=terms,
            security=settings.kafka_security(),
        )
        deadlines = TimerLoop(
            runtime.pool,
            handlers.timer_handlers(clock, turns),
            clock=clock,
            poll_seconds=settings.timer_poll_seconds,
        )
        return account_generations.wire(runtime).composition(api, [catalog_copy, terms, deadlines])

    return compose


compose = composer()


if __name__ == "__main__":
    main(
        "orders",
        OrdersSettings,
        migrations=MIGRATIONS,
        topics=TOPICS,
        composer=lambda _: composer(),
        extra_migrations=EXTRA_MIGRATIONS,
    )
