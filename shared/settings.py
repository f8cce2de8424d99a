"""Typed settings read from environment variables.

Each field ``foo_bar`` of a settings Struct is looked up first as
``<SERVICE>_FOO_BAR`` (e.g. ``CATALOG_HTTP_PORT``) and then as
``MARKETPLACE_FOO_BAR``, so one environment can configure all three services
and still override one of them.  Values are converted by msgspec, so a typo in
a number fails at start-up with the variable named, not later at run time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)


class Secret:
    """A value that must never reach a log line, a repr or an error message."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SettingsError(Exception):
    pass


def _decode_hook(type_: type, value: Any) -> Any:
    if type_ is Secret and isinstance(value, str):
        return Secret(value)
    if type_ is Path and isinstance(value, str):
        return Path(value)
    raise NotImplementedError


def load_settings(cls: type[S], service: str, environ: Mapping[str, str] | None = None) -> S:
    env = os.environ if environ is None else environ
    raw: dict[str, str] = {}
    for field in msgspec.structs.fields(cls):
        for name in (f"{service}_{field.name}".upper(), f"MARKETPLACE_{field.name}".upper()):
            if name in env:
                raw[field.name] = env[name]
                break
    try:
        return msgspec.convert(raw, type=cls, strict=False, dec_hook=_decode_hook)
    except msgspec.ValidationError as exc:
        # The message names the field (`$.http_port`), never the value.
        raise SettingsError(f"invalid {service} settings: {exc}") from None


def read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"cannot read key file {path}: {exc.strerror}") from None
