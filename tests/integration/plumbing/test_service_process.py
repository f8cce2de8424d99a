"""A service whose background loop dies exits non-zero, so a supervisor restarts it."""

from __future__ import annotations

import aiohttp

from deploy.local.infra import free_port
from tests.support.infra import Infra
from tests.support.keys import TokenKeys
from tests.support.processes import Processes
from tests.support.waiting import wait_for


def service_environment(infra: Infra, dsn: str, token_keys: TokenKeys, port: int) -> dict[str, str]:
    return {
        "CRASHING_DATABASE_URL": dsn,
        "CRASHING_HTTP_PORT": str(port),
        "CRASHING_KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
        "CRASHING_OPERATOR_TOKEN": token_keys.operator_token,
        "CRASHING_TOKEN_PUBLIC_KEY_FILE": str(token_keys.public_key_file),
    }


async def test_a_crashed_loop_makes_the_process_exit_non_zero(
    infra: Infra, fresh_database: str, token_keys: TokenKeys, processes: Processes
) -> None:
    environment = service_environment(infra, fresh_database, token_keys, free_port())
    service = processes.start("tests.support.crashing_service", "crash", env=environment)
    assert await service.exited(within=60) == 1, service.log()
    assert "background loop died" in service.log()
    assert "the loop's work failed for good" in service.log()


async def test_a_stopped_service_whose_loops_ran_to_the_end_exits_zero(
    infra: Infra, fresh_database: str, token_keys: TokenKeys, processes: Processes
) -> None:
    port = free_port()
    environment = service_environment(infra, fresh_database, token_keys, port)
    service = processes.start("tests.support.crashing_service", "run", env=environment)
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            assert service.alive(), service.log()
            async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                return response.status == 200

        await wait_for(
            ready, timeout=60, message="never ready", ignore=(aiohttp.ClientConnectionError,)
        )
    assert await service.terminate() == 0, service.log()
