"""``python -m services.catalog``: partners, customers, agreements and offerings."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from services.catalog import handlers, store
from services.catalog.http import CatalogHttp, build_api
from shared.clock import utc_now
from shared.contracts import catalog_accounts, catalog_agreements, catalog_offerings
from shared.service import Compose, Composition, Runtime, ServiceSettings, main
from shared.settings import read_key_file
from shared.timers import TimerLoop
from shared.token_generations import TokenGenerations
from shared.tokens import TokenIssuer

TOPICS = (catalog_accounts.TOPIC, catalog_agreements.TOPIC, catalog_offerings.TOPIC)
MIGRATIONS = Path(__file__).parent / "migrations"


class CatalogSettings(ServiceSettings, kw_only=True):
    database_url: str = "postgresql://postgres@127.0.0.1:5432/catalog"
    http_port: int = 8081
    token_signing_key_file: Path
    token_ttl_days: int = 90
    agreement_expiry_check_seconds: float = 30.0


def composer(settings: CatalogSettings) -> Compose:
    async def compose(runtime: Runtime) -> Composition:
        issuer = TokenIssuer(
            read_key_file(settings.token_signing_key_file),
            ttl=timedelta(days=settings.token_ttl_days),
        )

        # The catalog's own tables are the truth: an account it does not know is no account.
        generations = TokenGenerations(runtime.pool, store.token_generation, accept_unknown=False)

        return Composition(
            api=build_api(CatalogHttp(issuer=issuer, token_rotated=generations.forget)),
            loops=[
                generations,
                TimerLoop(
                    runtime.pool,
                    handlers.timer_handlers(utc_now),
                    poll_seconds=settings.agreement_expiry_check_seconds,
                ),
            ],
            revocations=generations.superseded,
        )

    return compose


if __name__ == "__main__":
    main("catalog", CatalogSettings, migrations=MIGRATIONS, topics=TOPICS, composer=composer)
