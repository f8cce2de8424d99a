"""``python -m services.settlement``: the settlement service.

Its ledger arrives with the settlement issue; today it runs the shared
plumbing: its own database and migrations, the outbox relay, health, metrics.
"""

from __future__ import annotations

from pathlib import Path

from shared.http.api import Api
from shared.service import Composition, Runtime, ServiceSettings, main


class SettlementSettings(ServiceSettings, kw_only=True):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/settlement"
    http_port: int = 8083


async def compose(_: Runtime) -> Composition:
    return Composition(api=Api("Partner marketplace: settlement"))


if __name__ == "__main__":
    main(
        "settlement",
        SettlementSettings,
        migrations=Path(__file__).parent / "migrations",
        topics=(),
        composer=lambda _: compose,
    )
