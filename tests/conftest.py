"""The test harness every layer shares.

Fixtures (all lazy: nothing starts unless a test asks for it, so unit tests
run without any infrastructure):

* ``infra`` (session): Kafka and PostgreSQL, from the environment
  (``TEST_KAFKA_BOOTSTRAP`` + ``TEST_PG_DSN``), testcontainers (a Docker engine
  answers; ``TEST_INFRA=local`` skips this) or the local processes of
  ``deploy.local.infra``.  ``infra.kafka_bootstrap``, ``infra.pg_dsn(db)``.
* ``fresh_database`` (function): the DSN of a new, empty database, dropped after.
  Fixtures of other scopes use ``tests.support.infra.create_database`` /
  ``drop_database`` / ``temporary_database`` directly.
* ``new_topic`` (function): ``await new_topic(partitions=3, compacted=False)``
  creates a uniquely named topic and its ``.dlq``; returns the name.
* ``token_keys`` (session): an Ed25519 key pair in files and an operator token.
* ``processes`` (function): starts ``python -m ...`` children; kills leftovers.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.infra import Infra, create_database, drop_database, provide_infra
from tests.support.kafka import NewTopic, create_topic
from tests.support.keys import TokenKeys, make_token_keys
from tests.support.processes import Processes

# Property tests explore new examples on a developer's machine, but CI replays
# the same ones every run: a CI failure must be reproducible, never a dice roll.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with provide_infra() as provided:
        yield provided


@pytest.fixture
async def fresh_database(infra: Infra, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    dsn = await create_database(infra, request.node.name)
    yield dsn
    await drop_database(infra, dsn)


@pytest.fixture
def new_topic(infra: Infra, request: pytest.FixtureRequest) -> NewTopic:
    label = request.node.name

    async def make(partitions: int = 3, compacted: bool = False) -> str:
        return await create_topic(
            infra.kafka_bootstrap, label=label, partitions=partitions, compacted=compacted
        )

    return make


@pytest.fixture(scope="session")
def token_keys(tmp_path_factory: pytest.TempPathFactory) -> TokenKeys:
    return make_token_keys(tmp_path_factory.mktemp("token-keys"))


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(log_dir=tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


_LAYERS = {
    "integration": pytest.mark.integration,
    "e2e": pytest.mark.e2e,
    "security": pytest.mark.security,
}
_INFRA_FIXTURES = frozenset({"infra", "fresh_database", "new_topic"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test by its layer (its folder); keep unit tests free of infrastructure."""
    tests_root = Path(__file__).parent
    for item in items:
        try:
            layer = item.path.relative_to(tests_root).parts[0]
        except ValueError:
            continue
        if layer in _LAYERS:
            item.add_marker(_LAYERS[layer])
        elif layer == "unit":
            needs = _INFRA_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            if needs:
                raise pytest.UsageError(
                    f"{item.nodeid} is a unit test but uses {sorted(needs)}: "
                    "move it to tests/integration"
                )
