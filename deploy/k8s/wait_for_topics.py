"""Init container: wait until Strimzi's Topic Operator has created every topic.

At start-up a service creates the topics it finds missing, with a development
broker's settings (one replica). On Kubernetes the KafkaTopic resources own the
topics (three replicas, ``min.insync.replicas=2``); a service that won the race
against the Topic Operator would create a one-replica topic, and every
``acks=all`` send to it would then fail for want of a second in-sync replica.
So a pod starts its service only once the topics it uses exist.

Only those: the broker shows a user only the topics its ACLs let it describe
(deploy/k8s/users.yaml), so the init container logs in as the service, with
the service's own ``MARKETPLACE_KAFKA_*`` settings, and waits for its topics.

Runs from the service image:
``PYTHONPATH=/app WAIT_FOR_TOPICS_SERVICE=orders python wait_for_topics.py``.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient

from shared.contracts.envelope import Topic
from shared.contracts.registry import ALL_TOPICS
from shared.kafka import PLAINTEXT, KafkaSecurity, KafkaSettings, client_options
from shared.retry import RetryPolicy
from shared.settings import load_settings

# The Topic Operator needs a Kafka cluster first, which takes minutes on a fresh install.
DEFAULT_PATIENCE_SECONDS = 600.0
POLICY = RetryPolicy(first_backoff=1.0, max_backoff=10.0)


def service_topics(service: str) -> Sequence[Topic]:
    """The topics ``python -m services.<service>`` would ask for at start-up."""
    topics: Sequence[Topic] = importlib.import_module(f"services.{service}.__main__").TOPICS
    return topics


def wanted_topics(topics: Sequence[Topic] = ALL_TOPICS) -> set[str]:
    return {name for topic in topics for name in (topic.name, topic.dead_letter)}


async def missing_topics(
    bootstrap: str, wanted: set[str], security: KafkaSecurity = PLAINTEXT
) -> set[str]:
    admin = AIOKafkaAdminClient(**client_options(bootstrap, security), request_timeout_ms=10_000)
    await admin.start()
    try:
        return wanted - set(await admin.list_topics())
    finally:
        await admin.close()


async def wait(
    bootstrap: str, patience: float, wanted: set[str], security: KafkaSecurity = PLAINTEXT
) -> bool:
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + patience
    attempt = 0
    while True:
        attempt += 1
        try:
            missing = await missing_topics(bootstrap, wanted, security)
        except Exception as exc:
            missing = wanted
            print(f"Kafka at {bootstrap} not answering: {exc!r}", file=sys.stderr)
        if not missing:
            return True
        if loop.time() >= give_up_at:
            print(f"topics still missing after {patience:.0f}s: {sorted(missing)}", file=sys.stderr)
            return False
        print(f"waiting for topics: {sorted(missing)}", file=sys.stderr)
        await asyncio.sleep(POLICY.backoff(attempt))


def main() -> None:
    service = os.environ["WAIT_FOR_TOPICS_SERVICE"]
    kafka = load_settings(KafkaSettings, service)
    wanted = wanted_topics(service_topics(service))
    patience = float(os.environ.get("WAIT_FOR_TOPICS_SECONDS", DEFAULT_PATIENCE_SECONDS))
    # Failing makes the kubelet restart the init container, with its own backoff.
    ready = asyncio.run(wait(kafka.kafka_bootstrap, patience, wanted, kafka.kafka_security()))
    sys.exit(0 if ready else 1)


if __name__ == "__main__":
    main()
