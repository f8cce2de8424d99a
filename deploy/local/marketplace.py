"""Run the whole marketplace locally: Kafka, PostgreSQL and the three services.

    uv run python deploy/local/marketplace.py up     # start everything (safe to repeat)
    uv run python deploy/local/marketplace.py down   # stop everything
    uv run python deploy/local/marketplace.py status

State (data, logs, keys, pids) lives in ``deploy/local/state``.  The token
signing key pair and the operator token are made on first start and kept
there with owner-only permissions; the operator token is never printed, only
where to read it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from deploy.local import infra  # noqa: E402

SERVICES = {"catalog": 8081, "orders": 8082, "settlement": 8083}
READY_TIMEOUT = 90.0


def _secrets(state: Path) -> dict[str, str]:
    """Token keys and the operator token, made once and kept private."""
    keys = state / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    os.chmod(keys, 0o700)
    private, public = keys / "token_signing_key.pem", keys / "token_public_key.pem"
    operator = keys / "operator_token"
    if not private.exists():
        from shared.tokens import generate_keypair

        private_pem, public_pem = generate_keypair()
        private.write_bytes(private_pem)
        public.write_bytes(public_pem)
        os.chmod(private, 0o600)
    if not operator.exists():
        operator.write_text(secrets.token_urlsafe(32))
        os.chmod(operator, 0o600)
    return {
        "CATALOG_TOKEN_SIGNING_KEY_FILE": str(private),
        "MARKETPLACE_TOKEN_PUBLIC_KEY_FILE": str(public),
        "MARKETPLACE_OPERATOR_TOKEN": operator.read_text().strip(),
    }


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _pid(state: Path, service: str) -> int | None:
    pidfile = state / "services" / f"{service}.pid"
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def up(args: argparse.Namespace) -> int:
    state: Path = args.state_dir
    kafka = infra.start_kafka(state, args.kafka_port, args.kafka_port + 1)
    postgres = infra.start_postgres(state, args.pg_port, durable=True, databases=list(SERVICES))
    env = dict(os.environ)
    env.update(_secrets(state))
    env["MARKETPLACE_KAFKA_BOOTSTRAP"] = kafka.bootstrap
    # Locally every client, the demo's many customers included, is 127.0.0.1, so
    # the per-address limit of public endpoints would throttle one developer as
    # if they were an attacker; the variables still win when set.
    env.setdefault("MARKETPLACE_PUBLIC_RATE_LIMIT_PER_MINUTE", "6000")
    env.setdefault("MARKETPLACE_PUBLIC_RATE_LIMIT_BURST", "500")
    # The demo's few partners answer every order of the day as fast as they can.
    env.setdefault("MARKETPLACE_PRINCIPAL_RATE_LIMIT_PER_MINUTE", "60000")
    env.setdefault("MARKETPLACE_PRINCIPAL_RATE_LIMIT_BURST", "2000")
    subprocess.run(
        [sys.executable, "-m", "shared.topics", "--bootstrap", kafka.bootstrap],
        cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    (state / "services").mkdir(exist_ok=True)
    for service, port in SERVICES.items():
        if _pid(state, service) is not None:
            continue
        env[f"{service.upper()}_DATABASE_URL"] = postgres.dsn(service)
        env[f"{service.upper()}_HTTP_PORT"] = str(port)
        log = (state / "services" / f"{service}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        (state / "services" / f"{service}.pid").write_text(str(process.pid))
    deadline = time.monotonic() + READY_TIMEOUT
    for service, port in SERVICES.items():
        while not _ready(port):
            if time.monotonic() > deadline or _pid(state, service) is None:
                print(f"{service} did not become ready; see {state}/services/{service}.log")
                return 1
            time.sleep(0.2)
    print(f"kafka       {kafka.bootstrap}")
    print(f"postgres    {postgres.dsn_base}")
    for service, port in SERVICES.items():
        print(f"{service:<11} http://127.0.0.1:{port}  (log {state}/services/{service}.log)")
    print(f"operator token: export OPERATOR_TOKEN=$(cat {state}/keys/operator_token)")
    print("next: make demo")
    return 0


def down(args: argparse.Namespace) -> int:
    state: Path = args.state_dir
    for service in SERVICES:
        pid = _pid(state, service)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _pid(state, service) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        (state / "services" / f"{service}.pid").unlink(missing_ok=True)
    infra.stop_kafka(state)
    infra.stop_postgres(state)
    print("stopped")
    return 0


def status(_: argparse.Namespace) -> int:
    running = True
    for service, port in SERVICES.items():
        ready = _ready(port)
        running &= ready
        print(f"{service:<11} {'ready' if ready else 'not ready'}")
    return 0 if running else 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--state-dir", type=Path, default=HERE / "state")
    parser.add_argument("--kafka-port", type=int, default=9092)
    parser.add_argument("--pg-port", type=int, default=5432)
    args = parser.parse_args()
    command = {"up": up, "down": down, "status": status}[args.command]
    return command(args)


if __name__ == "__main__":
    raise SystemExit(main())
