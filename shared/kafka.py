"""Kafka clients configured the one way the marketplace uses them."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError, OutOfOrderSequenceNumber
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from shared.contracts.envelope import Topic
from shared.settings import Secret, SettingsError

log = logging.getLogger(__name__)

# Kafka's error code for "topic already exists": creating topics is idempotent.
_TOPIC_ALREADY_EXISTS = 36


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSettings(msgspec.Struct, kw_only=True):
    """How to reach the brokers and who to be there (``MARKETPLACE_KAFKA_*``).

    The default is a development broker: plaintext, anyone may do anything.
    Where the broker authenticates and authorizes (deploy/k8s), each service
    logs in as its own user, whose ACLs let it write only its own topics.
    """

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: Secret | None = None
    # The CA that signed the brokers' certificates; None trusts the system's CAs.
    kafka_ssl_ca_file: Path | None = None
    # Off where an operator owns the topics (deploy/k8s: KafkaTopic resources), so
    # the service's user needs no Create right.
    kafka_create_topics: bool = True

    def __post_init__(self) -> None:
        # msgspec reports this as the settings' ValidationError: a half-configured
        # login fails at start-up, not at the first connection.
        if self.kafka_security_protocol.startswith("SASL_") and (
            not self.kafka_sasl_username or self.kafka_sasl_password is None
        ):
            raise ValueError(
                f"{self.kafka_security_protocol} needs kafka_sasl_username and kafka_sasl_password"
            )

    def kafka_security(self) -> KafkaSecurity:
        return KafkaSecurity(
            protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=self.kafka_sasl_password,
            ssl_ca_file=self.kafka_ssl_ca_file,
        )


class KafkaSecurity(msgspec.Struct, frozen=True, kw_only=True):
    """What every Kafka client of a service is given to connect (``client_options``)."""

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_ca_file: Path | None = None


PLAINTEXT = KafkaSecurity()


def client_options(bootstrap: str, security: KafkaSecurity = PLAINTEXT) -> dict[str, Any]:
    """The connection keywords of every AIOKafkaProducer, consumer and admin client.

    The password leaves its ``Secret`` only here, into the client, which never logs it.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "security_protocol": security.protocol,
    }
    if security.protocol in ("SSL", "SASL_SSL"):
        cafile = None if security.ssl_ca_file is None else str(security.ssl_ca_file)
        try:
            options["ssl_context"] = create_ssl_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"cannot load the Kafka CA file {cafile}: {exc}") from None
    if security.protocol.startswith("SASL_"):
        if security.sasl_username is None or security.sasl_password is None:
            raise ValueError(f"{security.protocol} needs a SASL username and password")
        options["sasl_mechanism"] = security.sasl_mechanism
        options["sasl_plain_username"] = security.sasl_username
        options["sasl_plain_password"] = security.sasl_password.reveal()
    return options


# What an idempotent producer's sends fail with when its per-partition batch
# numbers may have a gap the broker never fills: a batch that expired
# unacknowledged (the broker was away), and the refusal of every number after
# it.  aiokafka, unlike the Java client, keeps the producer id, so the one way
# on is a fresh producer (a new id, numbers from zero).
BATCH_NUMBER_GAP = (KafkaTimeoutError, OutOfOrderSequenceNumber)


def new_producer(
    bootstrap: str, *, client_id: str, security: KafkaSecurity = PLAINTEXT
) -> AIOKafkaProducer:
    # Idempotent producer with acks=all: a retried send never duplicates or
    # reorders a message within its partition, and nothing counts as sent
    # until every in-sync replica has it.
    return AIOKafkaProducer(
        **client_options(bootstrap, security),
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        request_timeout_ms=15_000,
    )


async def started(producer: AIOKafkaProducer) -> AIOKafkaProducer:
    """``producer``, started; or, if it cannot start, stopped again and the error raised."""
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


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


async def ensure_topics(
    bootstrap: str, specs: Iterable[NewTopic], security: KafkaSecurity = PLAINTEXT
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    wanted = list(specs)
    if not wanted:
        return
    admin = AIOKafkaAdminClient(**client_options(bootstrap, security), request_timeout_ms=15_000)
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
