"""The settings every bench gives the services it starts are written once, in bench/processes."""

from __future__ import annotations

import re
from pathlib import Path

from bench.processes import RATE_LIMITS_LIFTED, service_env

BENCH = Path(__file__).resolve().parents[3] / "bench"
RATE_LIMIT_SETTING = re.compile(r"MARKETPLACE_\w*RATE_LIMIT\w*")


def test_every_bench_takes_its_rate_limits_from_one_place() -> None:
    # A copy in one bench drifts: that bench then measures a throttled service.
    spelled = {
        path.name
        for path in BENCH.glob("*.py")
        if RATE_LIMIT_SETTING.search(path.read_text(encoding="utf-8"))
    }
    assert spelled == {"processes.py"}


def test_the_shared_service_settings_lift_every_rate_limit(tmp_path: Path) -> None:
    env = service_env(tmp_path, "127.0.0.1:9092", "bench.", "token")
    assert {name: env[name] for name in RATE_LIMITS_LIFTED} == dict(RATE_LIMITS_LIFTED)
    assert len(RATE_LIMITS_LIFTED) == 4  # public and per-caller, each rate and burst
