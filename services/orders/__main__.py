"""``python -m services.orders``: orders, the fulfilment saga across partners, usage."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from services.orders import consumers, handlers
from services.orders.http import OrdersHttp, build_api, utc_now
from shared.contracts import fulfillments, orders
from shared.db import unit_of_work
from shared.runtime import Periodic
from shared.service import Compose, Composition, Runtime, ServiceSettings, main

MIGRATIONS = Path(__file__).parent / "migrations"
# Its own topics, and the catalog's it reads (created if the catalog has not yet).
TOPICS = (orders.TOPIC, fulfillments.TOPIC, *consumers.CATALOG_TOPICS)


class OrdersSettings(ServiceSettings, kw_only=True):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/orders"
    http_port: int = 8082
    acceptance_deadline_seconds: float = 48 * 3600
    deadline_check_seconds: float = 5.0


def composer(settings: OrdersSettings) -> Compose:
    async def compose(runtime: Runtime) -> Composition:
        async def cancel_overdue_orders() -> None:
            # Batches of 100 keep each transaction short; loop until none is due.
            while True:
                async with unit_of_work(runtime.pool) as conn:
                    if await handlers.cancel_overdue_orders(conn, utc_now()) < 100:
                        return

        return Composition(
            api=build_api(
                OrdersHttp(
                    acceptance_window=timedelta(seconds=settings.acceptance_deadline_seconds)
                )
            ),
            loops=[
                consumers.catalog_copy(
                    bootstrap=settings.kafka_bootstrap,
                    topic_prefix=settings.topic_prefix,
                    pool=runtime.pool,
                    producer=runtime.producer,
                ),
                Periodic(
                    "cancel-overdue-orders", settings.deadline_check_seconds, cancel_overdue_orders
                ),
            ],
        )

    return compose


if __name__ == "__main__":
    main("orders", OrdersSettings, migrations=MIGRATIONS, topics=TOPICS, composer=composer)
