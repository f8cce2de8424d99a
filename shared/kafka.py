"""Kafka clients configured the one way the marketplace uses them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.protocol.metadata import MetadataRequest

from shared.contracts.envelope import Topic

log = logging.getLogger(__name__)

# Kafka's error code for "topic already exists": creating topics is idempotent.
_TOPIC_ALREADY_EXISTS = 36


def new_producer(bootstrap: str, *, client_id: str) -> AIOKafkaProducer:
    # Idempotent producer with acks=all: a retried send never duplicates or
    # reorders a message within its partition, and nothing counts as sent
    # until every in-sync replica has it.
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        request_timeout_ms=15_000,
    )


def _new_topic(
    name: str, partitions: int, compacted: bool, retain_forever: bool = False
) -> NewTopic:
    configs = {"cleanup.policy": "compact"} if compacted else {}
    if retain_forever:
        configs["retention.ms"] = "-1"
    if compacted:
        # Compact soon enough that a rebuild reads little more than the live state.
        configs["min.cleanable.dirty.ratio"] = "0.1"
        configs["segment.ms"] = str(60 * 60 * 1000)
    return NewTopic(
        name=name, num_partitions=partitions, replication_factor=1, topic_configs=configs
    )


def topic_specs(topics: Iterable[Topic], prefix: str = "") -> list[NewTopic]:
    """Specs for the topics and their dead-letter topics.

    ``prefix`` namespaces a whole deployment on a shared cluster ("staging."),
    and keeps concurrent test runs apart; contracts keep the bare names.
    """
    specs: list[NewTopic] = []
    for topic in topics:
        specs.append(
            _new_topic(prefix + topic.name, topic.partitions, topic.compacted, topic.retain_forever)
        )
        specs.append(_new_topic(prefix + topic.dead_letter, 1, compacted=False))
    return specs


async def ensure_topics(bootstrap: str, specs: Iterable[NewTopic]) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    wanted = list(specs)
    if not wanted:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        response = await admin.create_topics(wanted)
        for topic, code, *_ in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise RuntimeError(f"creating topic {topic} failed with Kafka error {code}")
    finally:
        await admin.close()


async def kafka_reachable(producer: AIOKafkaProducer, within: float = 2.0) -> None:
    """Raise unless a broker answers a metadata request within ``within`` seconds.

    The request names no topic (brokers only): a full metadata request on a
    cluster holding thousands of topics took seconds and made ``/readyz`` flap.
    """
    client = producer.client
    node_id = client.get_random_node()
    if node_id is None:
        raise ConnectionError("no Kafka broker known")
    await asyncio.wait_for(client.send(node_id, MetadataRequest([])), within)
