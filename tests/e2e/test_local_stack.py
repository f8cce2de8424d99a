"""The services as real processes: they come up ready and stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import aiohttp

from deploy.local.infra import free_port
from tests.support.infra import Infra, temporary_database
from tests.support.keys import TokenKeys
from tests.support.processes import Processes, PythonProcess
from tests.support.waiting import wait_for

SERVICES = ["catalog", "orders", "settlement"]

# A clean stop (in-flight requests finished, offsets committed) is quick when idle.
PROMPT_EXIT_SECONDS = 10.0


@dataclass
class RunningService:
    name: str
    process: PythonProcess
    base_url: str


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=3)) as response:
        return response.status


async def test_the_services_start_ready_and_stop_cleanly_on_sigterm(
    infra: Infra, token_keys: TokenKeys, processes: Processes
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        running: list[RunningService] = []
        for name in SERVICES:
            dsn = await stack.enter_async_context(temporary_database(infra, f"e2e_{name}"))
            port = free_port()
            prefix = name.upper()
            env = {
                f"{prefix}_DATABASE_URL": dsn,
                f"{prefix}_HTTP_PORT": str(port),
                "MARKETPLACE_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
                "MARKETPLACE_OPERATOR_TOKEN": token_keys.operator_token,
                "MARKETPLACE_TOKEN_PUBLIC_KEY_FILE": str(token_keys.public_key_file),
                # Only the catalog signs tokens; the others never see the private key.
                "CATALOG_TOKEN_SIGNING_KEY_FILE": str(token_keys.private_key_file),
                f"{prefix}_STARTUP_TIMEOUT_SECONDS": "30",
                # The most talkative level: a secret must not reach the log even here.
                "MARKETPLACE_LOG_LEVEL": "DEBUG",
            }
            process = processes.start(f"services.{name}", env=env, name=name)
            running.append(RunningService(name, process, f"http://127.0.0.1:{port}"))

        async with aiohttp.ClientSession() as session:
            for service in running:

                async def ready(service: RunningService = service) -> bool:
                    assert service.process.alive(), (
                        f"{service.name} exited early:\n{service.process.log()}"
                    )
                    return await status_of(session, f"{service.base_url}/readyz") == 200

                try:
                    await wait_for(
                        ready,
                        timeout=60,
                        interval=0.1,
                        ignore=(aiohttp.ClientError, asyncio.TimeoutError),
                        message=f"{service.name} did not become ready",
                    )
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{service.process.log()}") from None
                assert await status_of(session, f"{service.base_url}/healthz") == 200
            issued_token = await onboard_partner(session, running[0], token_keys.operator_token)

        started = time.monotonic()
        for service in running:
            service.process.popen.terminate()  # SIGTERM
        for service in running:
            code = await service.process.exited(within=PROMPT_EXIT_SECONDS)
            assert code == 0, f"{service.name} exited with {code}:\n{service.process.log()}"
        assert time.monotonic() - started < PROMPT_EXIT_SECONDS
        for service in running:
            log = service.process.log(last_lines=100_000)
            assert '"stopped"' in log, log
            assert token_keys.operator_token not in log, f"{service.name} logged a secret"
            assert issued_token not in log, f"{service.name} logged an issued token"


async def onboard_partner(
    session: aiohttp.ClientSession, catalog: RunningService, operator_token: str
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
