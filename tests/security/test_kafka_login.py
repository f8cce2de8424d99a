"""Each service logs in to Kafka as deploy/k8s says, and may do only what its KafkaUser allows.

A throwaway broker of its own (``deploy.local.infra`` with a ``KafkaLogin``):
SASL_SSL with SCRAM-SHA-512 and a CA made here, ACL authorization, no ACL means
no access. Its users are the k8s KafkaUsers with fresh passwords, and their ACLs
are created from deploy/k8s/users.yaml itself; each service's Kafka settings are
its Deployment's environment read by its own settings code, with only the
bootstrap, the password and the CA file pointing here. Producers are the
services' own (``new_producer``); consumers join the groups and read the topics
the services' compositions consume.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)
from aiokafka.protocol.admin import CreateAclsRequest_v1, DescribeAclsRequest
from aiokafka.protocol.api import Request
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deploy.local import infra as local
from shared.kafka import KafkaSecurity, client_options, ensure_topics, new_producer
from shared.service import ServiceSettings
from shared.settings import Secret, load_settings
from tests.support.infra import local_state_dir
from tests.support.waiting import wait_for
from tests.unit.deploy.test_k8s_manifests import (
    SETTINGS,
    consumers_of,
    container,
    declared_topics,
    environment,
    published,
    user_acls,
)

ADMIN = "admin"

# Kafka's AclOperation, AclResourceType, PatternType and AclPermissionType codes.
_OPERATIONS = {"Read": 3, "Write": 4, "Describe": 8}
_RESOURCE_TYPES = {"topic": 2, "group": 3}
_ANY = 1
_LITERAL = 3
_ALLOW = 3


@dataclass(frozen=True)
class SecureBroker:
    bootstrap: str
    ca_file: Path
    passwords: dict[str, str]
    log_file: Path

    def admin(self) -> KafkaSecurity:
        return KafkaSecurity(
            protocol="SASL_SSL",
            sasl_username=ADMIN,
            sasl_password=Secret(self.passwords[ADMIN]),
            ssl_ca_file=self.ca_file,
        )

    def settings(self, service: str, password: str | None = None) -> ServiceSettings:
        """The service's settings as its pod reads them, pointed at this broker."""
        prefix = service.upper()
        env = environment(container(service)) | {
            f"{prefix}_KAFKA_BOOTSTRAP": self.bootstrap,
            f"{prefix}_KAFKA_SASL_PASSWORD": password or self.passwords[service],
            f"{prefix}_KAFKA_SSL_CA_FILE": str(self.ca_file),
        }
        return load_settings(SETTINGS[service], service, env)


def write_tls_files(folder: Path) -> tuple[Path, Path]:
    """A self-signed CA that is also the broker's certificate for 127.0.0.1: (key+cert, CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "marketplace test broker")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(local.HOST))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    keystore, ca = folder / "broker.pem", folder / "ca.pem"
    keystore.write_bytes(key_pem + cert_pem)
    ca.write_bytes(cert_pem)
    return keystore, ca


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[SecureBroker]:
    passwords = {user: secrets.token_hex(16) for user in (ADMIN, *SETTINGS)}
    with local_state_dir() as state_dir:
        keystore, ca = write_tls_files(state_dir)
        login = local.KafkaLogin(admin=ADMIN, users=passwords, tls_pem=keystore, tls_ca=ca)
        try:
            server = local.start_kafka(
                state_dir, local.free_port(), local.free_port(), heap_mb=256, login=login
            )
            yield SecureBroker(server.bootstrap, ca, passwords, server.log_file)
        finally:
            local.stop_kafka(state_dir, 30.0)


class CreateAcls(Request[CreateAclsRequest_v1]):  # type: ignore[misc]
    """Many ACLs in one request (aiokafka's admin client has no create_acls, and
    its CreateAclsRequest carries one; the broker answers a connection's requests
    one at a time, each after a metadata commit)."""

    API_KEY = 30

    def __init__(self, creations: list[tuple[int, str, int, str, str, int, int]]) -> None:
        self.creations = creations

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class(self.creations)


async def grant_k8s_acls(broker: SecureBroker) -> None:
    """Every ACL of every KafkaUser in deploy/k8s, created by the super user."""
    creations = [
        (_RESOURCE_TYPES[kind], name, _LITERAL, f"User:{user}", "*", _OPERATIONS[op], _ALLOW)
        for user in SETTINGS
        for kind, name, op in sorted(user_acls(user))
    ]
    admin = AIOKafkaAdminClient(**client_options(broker.bootstrap, broker.admin()))
    await admin.start()
    try:
        response = await admin._send_request(CreateAcls(creations))
        failed = [
            (creation, code, message)
            for creation, (code, message) in zip(
                creations, response.creation_responses, strict=True
            )
            if code != 0
        ]
        assert not failed, failed

        async def acls_in_force() -> bool:
            # The answer comes after the controller committed them; the broker's
            # authorizer applies them a moment later, and answers this from its own.
            every = DescribeAclsRequest(_ANY, None, _ANY, None, None, _ANY, _ANY)
            described = await admin._send_request(every)
            return sum(len(acls) for *_, acls in described.resources) == len(creations)

        await wait_for(acls_in_force, timeout=10, message="the broker never applied the ACLs")
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def k8s_broker(secure_broker: SecureBroker) -> SecureBroker:
    """The broker with deploy/k8s's topics (created by the super user) and users' ACLs."""
    topics = [
        NewTopic(name, partitions, replication_factor=1, topic_configs=configs)
        for name, (partitions, configs) in declared_topics().items()
    ]
    await ensure_topics(secure_broker.bootstrap, topics, secure_broker.admin())
    await grant_k8s_acls(secure_broker)
    return secure_broker


Groups = dict[str, dict[str, tuple[str, ...]]]  # service -> its consumers' group -> topics


@pytest.fixture(scope="module")
def groups() -> Groups:
    """The groups and topics of the consumers each service's composition runs.

    Built outside the tests' event loop: composing runs a loop of its own.
    """
    return {s: {c.group_id: tuple(c.topics) for c in consumers_of(s)} for s in SETTINGS}


async def publish(broker: SecureBroker, service: str, consumed: set[str]) -> set[str]:
    """One event on each topic the service's code writes: its outbox's and its dead letters."""
    settings = broker.settings(service)
    producer = new_producer(
        settings.kafka_bootstrap, client_id=service, security=settings.kafka_security()
    )
    try:
        await producer.start()
        written = published(service) | {f"{topic}.dlq" for topic in consumed}
        for topic in sorted(written):
            await producer.send_and_wait(topic, f"from {service}".encode(), key=b"k")
    finally:
        await producer.stop()
    return written


async def read_as_group(
    broker: SecureBroker, service: str, group_id: str, topics: tuple[str, ...]
) -> set[str]:
    """Join the group, read until every topic gave an event, commit; the topics read."""
    security = broker.settings(service).kafka_security()
    consumer = AIOKafkaConsumer(
        *topics,
        **client_options(broker.bootstrap, security),
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    seen: set[str] = set()
    try:
        await consumer.start()

        async def every_topic_read() -> bool:
            batches = await consumer.getmany(timeout_ms=200)
            seen.update(tp.topic for tp, records in batches.items() if records)
            return seen >= set(topics)

        await wait_for(every_topic_read, timeout=15, message=f"{group_id} read {seen} of {topics}")
        await consumer.commit()
    finally:
        await consumer.stop()
    return seen


async def test_each_service_writes_its_topics_and_reads_as_its_groups(
    k8s_broker: SecureBroker, groups: Groups
) -> None:
    # The settings are the manifests': SASL_SSL, SCRAM-SHA-512, the user named like the service.
    for service in SETTINGS:
        security = k8s_broker.settings(service).kafka_security()
        assert (security.protocol, security.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
        assert security.sasl_username == service

    consumed = {s: {t for topics in groups[s].values() for t in topics} for s in SETTINGS}
    written = await asyncio.gather(*(publish(k8s_broker, s, consumed[s]) for s in SETTINGS))
    assert set.union(*written) >= {"orders.orders", "catalog.accounts", "settlement.payouts"}

    joins = [(s, group, topics) for s in SETTINGS for group, topics in groups[s].items()]
    assert len(joins) == 4  # orders' two and settlement's two
    read = await asyncio.gather(*(read_as_group(k8s_broker, *join) for join in joins))
    assert [set(topics) for _, _, topics in joins] == read


async def test_a_wrong_password_is_refused_and_no_password_is_logged(
    k8s_broker: SecureBroker, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = secrets.token_hex(16)
    settings = k8s_broker.settings("orders", password=wrong)
    caplog.set_level(logging.DEBUG)  # aiokafka's every request and response
    producer = new_producer(
        settings.kafka_bootstrap, client_id="orders", security=settings.kafka_security()
    )
    with pytest.raises(KafkaConnectionError) as refused:
        await producer.start()
    await producer.stop()

    # aiokafka raises "Unable to bootstrap"; its error line says why.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        "SaslAuthenticationFailed" in e and "invalid credentials" in e and "SCRAM-SHA-512" in e
        for e in errors
    ), errors
    broker_log = k8s_broker.log_file.read_text(errors="replace")
    assert "Failed authentication" in broker_log
    # Neither the wrong password nor any real one, in any log, the error or the settings.
    for password in (wrong, *k8s_broker.passwords.values()):
        assert password not in caplog.text
        assert password not in repr(refused.value)
        assert password not in broker_log
        assert password not in repr(settings)


async def test_a_service_cannot_write_another_services_topics(k8s_broker: SecureBroker) -> None:
    async def write(service: str, topic: str) -> None:
        settings = k8s_broker.settings(service)
        producer = new_producer(
            settings.kafka_bootstrap, client_id=service, security=settings.kafka_security()
        )
        try:
            await producer.start()
            await producer.send_and_wait(topic, b"forged", key=b"k")
        finally:
            await producer.stop()

    # Settlement reads orders.orders (Describe, Read) but may not write it: no forged
    # "confirmed" for an order never placed.
    with pytest.raises(TopicAuthorizationFailedError):
        await write("settlement", "orders.orders")
    # Orders has no right at all on settlement's topic.
    with pytest.raises(TopicAuthorizationFailedError):
        await write("orders", "settlement.payouts")
    # Nor on catalog's, which it only reads.
    with pytest.raises(TopicAuthorizationFailedError):
        await write("orders", "catalog.offerings")


async def test_a_consumer_cannot_join_another_services_group(
    k8s_broker: SecureBroker, groups: Groups
) -> None:
    # catalog.accounts is a topic orders may read; the ledger's group is settlement's.
    assert "catalog.accounts" in groups["orders"]["orders.account-generations"]
    assert "settlement-ledger" in groups["settlement"]
    with pytest.raises(GroupAuthorizationFailedError):
        await read_as_group(k8s_broker, "orders", "settlement-ledger", ("catalog.accounts",))
