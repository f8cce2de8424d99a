"""``python -m services.settlement``: the settlement service.

Its ledger arrives with the settlement issue; today it runs the shared
plumbing: its own database and migrations, the outbox relay, health, metrics.
"""

from __future__ import annotations

from pathlib import Path

from shared import account_generations
from shared.http.api import Api
from shared.service import Composition, Runtime, ServiceSettings, main


class SettlementSettings(ServiceSettings, kw_only=True):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/settlement"
    http_port: int = 8083


MIGRATIONS = Path(__file__).parent / "migrations"
# Settlement refuses tokens a rotation superseded, from its own view of catalog.accounts.
EXTRA_MIGRATIONS = (account_generations.MIGRATIONS,)
TOPICS = account_generations.TOPICS


async def compose(runtime: Runtime) -> Composition:
    return account_generations.wire(runtime).composition(Api("Partner marketplace: settlement"))


if __name__ == "__main__":
    main(
        "settlement",
        SettlementSettings,
        migrations=MIGRATIONS,
        topics=TOPICS,
        composer=lambda _: compose,
        extra_migrations=EXTRA_MIGRATIONS,
    )
