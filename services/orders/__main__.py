"""``python -m services.orders``: orders, the fulfilment saga across partners, usage."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from services.orders import consumers, handlers
from services.orders.http import OrdersHttp, build_api
from shared import account_generations
from shared.clock import utc_now
from shared.contracts import fulfillments, orders
from shared.service import Composition, Runtime, ServiceSettings, main
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


async def compose(runtime: Runtime) -> Composition:
    settings = runtime.settings
    if not isinstance(settings, OrdersSettings):
        raise TypeError("the orders service runs with OrdersSettings")
    api = build_api(
        OrdersHttp(acceptance_window=timedelta(seconds=settings.acceptance_deadline_seconds))
    )
    catalog_copy = consumers.catalog_copy(
        bootstrap=settings.kafka_bootstrap,
        topic_prefix=settings.topic_prefix,
        pool=runtime.pool,
        producer=runtime.producer,
    )
    deadlines = TimerLoop(
        runtime.pool,
        {
            handlers.ACCEPTANCE_DEADLINE: lambda conn, order_id: (
                handlers.acceptance_deadline_passed(conn, order_id, utc_now())
            )
        },
        clock=utc_now,
        poll_seconds=settings.timer_poll_seconds,
    )
    return account_generations.wire(runtime).composition(api, [catalog_copy, deadlines])


if __name__ == "__main__":
    main(
        "orders",
        OrdersSettings,
        migrations=MIGRATIONS,
        topics=TOPICS,
        composer=lambda _: compose,
        extra_migrations=EXTRA_MIGRATIONS,
    )
