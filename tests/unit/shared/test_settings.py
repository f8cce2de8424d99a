"""Typed settings: SERVICE_ then MARKETPLACE_ variables, errors name the field, secrets hide."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.service import ServiceSettings
from shared.settings import Secret, SettingsError, load_settings

BASE = {
    "ORDERS_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/orders",
    "ORDERS_HTTP_PORT": "8082",
    "MARKETPLACE_OPERATOR_TOKEN": "op-secret-value",
    "MARKETPLACE_TOKEN_PUBLIC_KEY_FILE": "/etc/marketplace/public.pem",
}


def test_values_are_typed() -> None:
    settings = load_settings(ServiceSettings, "orders", BASE)
    assert settings.http_port == 8082
    assert settings.token_public_key_file == Path("/etc/marketplace/public.pem")
    assert isinstance(settings.operator_token, Secret)
    assert settings.operator_token.reveal() == "op-secret-value"


def test_the_service_variable_wins_over_the_marketplace_one() -> None:
    env = {**BASE, "MARKETPLACE_HTTP_PORT": "9000", "MARKETPLACE_KAFKA_BOOTSTRAP": "k:1"}
    settings = load_settings(ServiceSettings, "orders", env)
    assert settings.http_port == 8082  # ORDERS_HTTP_PORT
    assert settings.kafka_bootstrap == "k:1"  # only MARKETPLACE_ given
    other = load_settings(ServiceSettings, "settlement", {**env, "SETTLEMENT_DATABASE_URL": "x"})
    assert other.http_port == 9000  # ORDERS_ does not reach settlement


def test_defaults_apply_when_nothing_is_set() -> None:
    settings = load_settings(ServiceSettings, "orders", BASE)
    assert settings.http_host == "127.0.0.1"
    assert settings.db_pool_size == 10


def test_a_missing_required_setting_names_it() -> None:
    env = {k: v for k, v in BASE.items() if k != "ORDERS_DATABASE_URL"}
    with pytest.raises(SettingsError, match="database_url"):
        load_settings(ServiceSettings, "orders", env)


@given(st.from_regex(r"[a-z][a-z0-9-]{3,20}", fullmatch=True))
def test_a_bad_number_names_the_field_and_not_the_value(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(ServiceSettings, "orders", {**BASE, "ORDERS_DB_POOL_SIZE": value})
    message = str(caught.value)
    assert "db_pool_size" in message
    assert value not in message


MASK = repr(Secret(""))


# A marker keeps a drawn secret from being, by chance, text the settings show
# anyway (a drawn "127.0.0." is in every DSN); what follows it is arbitrary.
@given(st.text(min_size=8).map(lambda s: f"tok-{s}").filter(lambda s: s not in MASK))
def test_a_secret_never_shows_in_repr_str_or_logs(value: str) -> None:
    secret = Secret(value)
    settings = load_settings(ServiceSettings, "orders", {**BASE, "ORDERS_OPERATOR_TOKEN": value})
    assert settings.operator_token == secret
    record = logging.makeLogRecord({"msg": "settings %s", "args": (settings,)})
    for shown in (repr(secret), str(secret), f"{secret}", repr(settings), record.getMessage()):
        assert value not in shown
    assert settings.operator_token.reveal() == value


def test_secrets_compare_by_value() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    assert len({Secret("a"), Secret("a")}) == 1
