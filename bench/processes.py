"""Services started for a bench as real processes, the way a user starts them.

``python -m services.<name>`` with the settings a bench gives every service
(one Kafka, one topic prefix, one operator token, one token key pair, a pool
of ``POOL_SIZE``, the public rate limit out of the way) and the ones it gives
each instance (database, port).  Two instances of a service on one database
and one prefix are what a second replica is: they share its consumer groups.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from shared.tokens import generate_keypair

ROOT = Path(__file__).resolve().parent.parent
POOL_SIZE = 10  # MARKETPLACE_DB_POOL_SIZE the benches give each service
# The rate limits out of a bench's way, for every service any bench starts.
RATE_LIMITS_LIFTED: Final[Mapping[str, str]] = {
    # Every client of a bench is 127.0.0.1: the per-address limit would throttle them.
    "MARKETPLACE_PUBLIC_RATE_LIMIT_PER_MINUTE": "600000",
    "MARKETPLACE_PUBLIC_RATE_LIMIT_BURST": "100000",
    # One token places, browses or answers everything: the per-caller limit would cap it.
    "MARKETPLACE_PRINCIPAL_RATE_LIMIT_PER_MINUTE": "600000",
    "MARKETPLACE_PRINCIPAL_RATE_LIMIT_BURST": "100000",
}


def wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def stop(processes: Mapping[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each, then a wait; one still there 30 s later is killed."""
    for process in processes.values():
        process.terminate()
    for label, process in processes.items():
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print(f"{label} did not stop within 30 s of SIGTERM; killed", flush=True)
            process.kill()
            process.wait()


def signing_keys(state: Path) -> bytes:
    """A fresh token key pair in ``state``; the private key (PEM), for issuing tokens."""
    private_pem, public_pem = generate_keypair()
    (state / "private.pem").write_bytes(private_pem)
    (state / "public.pem").write_bytes(public_pem)
    return private_pem


def service_env(state: Path, kafka: str, prefix: str, operator_token: str) -> dict[str, str]:
    """What every service of one bench run shares; ``signing_keys(state)`` first."""
    return dict(
        os.environ,
        MARKETPLACE_KAFKA_BOOTSTRAP=kafka,
        MARKETPLACE_TOPIC_PREFIX=prefix,
        MARKETPLACE_OPERATOR_TOKEN=operator_token,
        MARKETPLACE_TOKEN_PUBLIC_KEY_FILE=str(state / "public.pem"),
        CATALOG_TOKEN_SIGNING_KEY_FILE=str(state / "private.pem"),
        MARKETPLACE_LOG_LEVEL=os.environ.get("MARKETPLACE_LOG_LEVEL", "WARNING"),
        MARKETPLACE_DB_POOL_SIZE=str(POOL_SIZE),
        **RATE_LIMITS_LIFTED,
    )


@dataclass
class Fleet:
    """Processes a bench started, each with its log in ``state``; all stopped on leaving."""

    state: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start_service(
        self, label: str, service: str, env: dict[str, str], database: str, port: int
    ) -> None:
        """``python -m services.<service>`` as ``label`` (``orders-2`` for a second one)."""
        upper = service.upper()
        own = {f"{upper}_DATABASE_URL": database, f"{upper}_HTTP_PORT": str(port)}
        log = (self.state / f"{label}.log").open("wb")
        self.processes[label] = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"], cwd=ROOT, env={**env, **own},
            stdout=log, stderr=log,
        )  # fmt: skip
        self.ports[label] = port

    def start(self, label: str, *command: str) -> None:
        self.processes[label] = subprocess.Popen([sys.executable, *command], cwd=ROOT)

    def url(self, label: str) -> str:
        return f"http://127.0.0.1:{self.ports[label]}"

    def pids(self) -> dict[str, int]:
        return {label: process.pid for label, process in self.processes.items()}

    def wait_healthy(self, timeout: float = 90.0) -> None:
        """Every service answering ``/healthz``.

        Not ``/readyz``: readiness fetches the metadata of every topic, which on a
        broker shared with many test runs can take past its 2 s budget.
        """
        for label in self.ports:
            try:
                wait_ready(f"{self.url(label)}/healthz", timeout=timeout)
            except RuntimeError:
                print(f"{label} did not become ready; its log ends:\n{self.tail(label)}")
                raise

    def tail(self, label: str, size: int = 3000) -> str:
        return (self.state / f"{label}.log").read_bytes()[-size:].decode(errors="replace")

    def stop(self) -> None:
        for label, process in self.processes.items():
            if process.poll() is not None and label in self.ports:
                print(f"{label} exited with {process.returncode}:\n{self.tail(label, 2000)}")
        stop(self.processes)
        self.processes.clear()
        self.ports.clear()


@contextmanager
def fleet(state: Path) -> Iterator[Fleet]:
    started = Fleet(state)
    try:
        yield started
    finally:
        started.stop()
