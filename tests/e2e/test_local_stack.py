"""The services as real processes: they come up ready and stop cleanly on SIGTERM."""

from __future__ import annotations

import time

import aiohttp

from tests.support.infra import Infra
from tests.support.keys import TokenKeys
from tests.support.processes import Processes
from tests.support.stack import ServiceProcess, running_stack

# A clean stop (in-flight requests finished, offsets committed) is quick when idle.
PROMPT_EXIT_SECONDS = 10.0


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=3)) as response:
        return response.status


async def test_the_services_start_ready_and_stop_cleanly_on_sigterm(
    infra: Infra, token_keys: TokenKeys, processes: Processes
) -> None:
    settings = {
        # The most talkative level: a secret must not reach the log even here.
        "MARKETPLACE_LOG_LEVEL": "DEBUG",
        # As a user runs them: a stop is prompt because it is clean, not because it is cut short.
        "MARKETPLACE_SHUTDOWN_TIMEOUT_SECONDS": "20",
    }
    async with running_stack(infra, token_keys, processes, extra_env=settings) as stack:
        running = list(stack.services.values())
        async with aiohttp.ClientSession() as session:
            for service in running:  # running_stack waited for /readyz; alive all along
                assert await status_of(session, f"{service.base_url}/healthz") == 200
            issued_token = await onboard_partner(session, stack.catalog, token_keys.operator_token)

        started = time.monotonic()
        for service in running:
            service.running.popen.terminate()  # SIGTERM
        for service in running:
            code = await service.running.exited(within=PROMPT_EXIT_SECONDS)
            assert code == 0, f"{service.name} exited with {code}:\n{service.log()}"
        assert time.monotonic() - started < PROMPT_EXIT_SECONDS
        for service in running:
            log = service.log(last_lines=100_000)
            assert '"stopped"' in log, log
            assert token_keys.operator_token not in log, f"{service.name} logged a secret"
            assert issued_token not in log, f"{service.name} logged an issued token"


async def onboard_partner(
    session: aiohttp.ClientSession, catalog: ServiceProcess, operator_token: str
) -> str:
    """A real request that carries one secret in and one out, so logs can be checked for both."""
    async with session.post(
        f"{catalog.base_url}/v1/partners",
        json={"name": "Log check", "kind": "isv"},
        headers={"Authorization": f"Bearer {operator_token}", "Idempotency-Key": "e2e-1"},
    ) as response:
        assert response.status == 201, await response.text()
        token: str = (await response.json())["token"]
    return token
