"""The ``MARKETPLACE_KAFKA_*`` security settings become the clients' keyword arguments.

The default is the development broker's (plaintext, no login), so local runs
and tests connect as before; the password is revealed to the client only.
"""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared import kafka
from shared.consumer import BatchConsumer
from shared.contracts.envelope import EventRegistry
from shared.kafka import KafkaSettings, client_options
from shared.settings import SettingsError, load_settings

PASSWORD = "s3cr3t-scram-password"

SASL_PLAINTEXT = {
    "MARKETPLACE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "MARKETPLACE_KAFKA_SASL_USERNAME": "orders",
    "MARKETPLACE_KAFKA_SASL_PASSWORD": PASSWORD,
}


def options(environ: dict[str, str]) -> dict[str, Any]:
    settings = load_settings(KafkaSettings, "orders", environ)
    return client_options(settings.kafka_bootstrap, settings.kafka_security())


def ca_file(directory: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cluster-ca")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = directory / "ca.crt"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def test_by_default_clients_connect_in_plaintext_without_a_login() -> None:
    assert options({}) == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}


def test_sasl_plaintext_logs_in_with_the_mechanism_user_and_password() -> None:
    assert options(SASL_PLAINTEXT) == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "orders",
        "sasl_plain_password": PASSWORD,
    }


def test_a_service_overrides_the_shared_user() -> None:
    environ = {**SASL_PLAINTEXT, "ORDERS_KAFKA_SASL_USERNAME": "orders-v2"}
    assert options(environ)["sasl_plain_username"] == "orders-v2"


def test_sasl_ssl_verifies_the_brokers_against_the_configured_ca(tmp_path: Path) -> None:
    environ = {
        **SASL_PLAINTEXT,
        "MARKETPLACE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "MARKETPLACE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "MARKETPLACE_KAFKA_SSL_CA_FILE": str(ca_file(tmp_path)),
    }
    got = options(environ)
    context = got.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert [ca["subject"] for ca in context.get_ca_certs()] == [((("commonName", "cluster-ca"),),)]
    assert got["security_protocol"] == "SASL_SSL"
    assert got["sasl_mechanism"] == "SCRAM-SHA-256"


def test_a_missing_ca_file_is_named_at_start_up(tmp_path: Path) -> None:
    environ = {
        "MARKETPLACE_KAFKA_SECURITY_PROTOCOL": "SSL",
        "MARKETPLACE_KAFKA_SSL_CA_FILE": str(tmp_path / "nowhere.crt"),
    }
    with pytest.raises(SettingsError, match=r"nowhere\.crt"):
        options(environ)


def test_ssl_without_a_login_sends_no_sasl_arguments() -> None:
    got = options({"MARKETPLACE_KAFKA_SECURITY_PROTOCOL": "SSL"})
    assert isinstance(got.pop("ssl_context"), ssl.SSLContext)
    assert got == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "SSL"}


@pytest.mark.parametrize(
    "environ",
    [
        {"MARKETPLACE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
        {**SASL_PLAINTEXT, "MARKETPLACE_KAFKA_SASL_USERNAME": ""},
        {k: v for k, v in SASL_PLAINTEXT.items() if not k.endswith("PASSWORD")},
    ],
)
def test_a_login_without_user_or_password_fails_at_start_up(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="kafka_sasl_username and kafka_sasl_password"):
        load_settings(KafkaSettings, "orders", environ)


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MARKETPLACE_KAFKA_SECURITY_PROTOCOL", "SASL"), ("MARKETPLACE_KAFKA_SASL_MECHANISM", "MD5")],
)
def test_an_unknown_protocol_or_mechanism_is_named_and_the_password_is_not(
    variable: str, value: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(KafkaSettings, "orders", {**SASL_PLAINTEXT, variable: value})
    assert variable.removeprefix("MARKETPLACE_").lower() in str(refused.value)
    assert PASSWORD not in str(refused.value)


def test_the_password_is_in_no_repr_and_no_log_line(caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(KafkaSettings, "orders", SASL_PLAINTEXT)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("test").info("settings %s %r", settings, settings.kafka_security())
    shown = [repr(settings), str(settings), repr(settings.kafka_security()), caplog.text]
    assert [PASSWORD in text for text in shown] == [False] * len(shown)
    assert "orders" in caplog.text


async def test_the_producer_and_consumers_are_built_with_the_security_settings() -> None:
    security = load_settings(KafkaSettings, "orders", SASL_PLAINTEXT).kafka_security()
    producer = kafka.new_producer("broker:9092", client_id="orders", security=security)
    consumer = BatchConsumer(
        name="orders.catalog-copy",
        bootstrap="broker:9092",
        topics=["catalog.offerings"],
        registry=EventRegistry(()),
        handler=cast(Any, None),
        pool=cast(Any, None),
        producer=producer,
        security=security,
    )
    for client in (producer.client, consumer._consumer._client):
        assert (client._security_protocol, client._sasl_mechanism) == (
            "SASL_PLAINTEXT",
            "SCRAM-SHA-512",
        )
        assert client._sasl_plain_password == PASSWORD
    await consumer._consumer.stop()  # never started: only marks it closed
    await producer.stop()
