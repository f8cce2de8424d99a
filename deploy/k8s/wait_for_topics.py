"""Init container: wait until Strimzi's Topic Operator has created every topic.

At start-up a service creates the topics it finds missing, with a development
broker's settings (one replica). On Kubernetes the KafkaTopic resources own the
topics (three replicas, ``min.insync.replicas=2``); a service that won the race
against the Topic Operator would create a one-replica topic, and every
``acks=all`` send to it would then fail for want of a second in-sync replica.
So a pod starts its service only once all topics exist.

Runs from the service image: ``PYTHONPATH=/app python wait_for_topics.py``.
"""

from __future__ import annotations

import asyncio
import os
import sys

from aiokafka.admin import AIOKafkaAdminClient

from shared.contracts.registry import ALL_TOPICS
from shared.retry import RetryPolicy

# The Topic Operator needs a Kafka cluster first, which takes minutes on a fresh install.
DEFAULT_PATIENCE_SECONDS = 600.0
POLICY = RetryPolicy(first_backoff=1.0, max_backoff=10.0)


def wanted_topics() -> set[str]:
    return {name for topic in ALL_TOPICS for name in (topic.name, topic.dead_letter)}


async def missing_topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        return wanted_topics() - set(await admin.list_topics())
    finally:
        await admin.close()


async def wait(bootstrap: str, patience: float) -> bool:
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + patience
    attempt = 0
    while True:
        attempt += 1
        try:
            missing = await missing_topics(bootstrap)
        except Exception as exc:
            missing = wanted_topics()
            print(f"Kafka at {bootstrap} not answering: {exc!r}", file=sys.stderr)
        if not missing:
            return True
        if loop.time() >= give_up_at:
            print(f"topics still missing after {patience:.0f}s: {sorted(missing)}", file=sys.stderr)
            return False
        print(f"waiting for topics: {sorted(missing)}", file=sys.stderr)
        await asyncio.sleep(POLICY.backoff(attempt))


def main() -> None:
    bootstrap = os.environ["MARKETPLACE_KAFKA_BOOTSTRAP"]
    patience = float(os.environ.get("WAIT_FOR_TOPICS_SECONDS", DEFAULT_PATIENCE_SECONDS))
    # Failing makes the kubelet restart the init container, with its own backoff.
    sys.exit(0 if asyncio.run(wait(bootstrap, patience)) else 1)


if __name__ == "__main__":
    main()
