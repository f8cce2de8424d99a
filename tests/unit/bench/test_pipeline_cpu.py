"""The pipeline bench's CPU accounting: /proc parsing and the per-order arithmetic."""

from __future__ import annotations

import math
import os

import pytest

from bench.pipeline_cpu import (
    BENCH_READS,
    POSTGRES_OTHER,
    Snapshot,
    Usage,
    ceiling,
    listening_inodes,
    machine_ticks,
    parent_pid,
    per_order_ms,
    postgres_database,
    process_ticks,
    usage_between,
)

TICKS = os.sysconf("SC_CLK_TCK")
# A command name with spaces and a parenthesis, as a process may give itself.
STAT = (
    "4242 (my (odd) name) S 17 4242 17 0 -1 4194560 5000 0 3 0 "
    "1234 567 8 9 20 0 3 0 123456 1000000 2000 18446744073709551615"
)
NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:3C48 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 1233811 1 0
   1: 0100007F:3C48 0100007F:B89C 01 00000000:00000000 02:000AA19E 00000000   101        0 1238836 2 0
   2: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 166 1 0
"""  # noqa: E501
NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:4A94 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1230976 1 0
"""  # noqa: E501


def test_a_process_s_cpu_is_its_user_plus_system_ticks_whatever_its_name() -> None:
    assert process_ticks(STAT) == 1234 + 567
    assert parent_pid(STAT) == 17


def test_the_machine_is_busy_whenever_it_is_neither_idle_nor_waiting_on_io() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    busy, total = machine_ticks("cpu  2000 10 300 5000 40 0 50 6 100 0\ncpu0 1 2 3 4 5 6 7 8 9 0\n")
    assert total == 2000 + 10 + 300 + 5000 + 40 + 0 + 50 + 6  # guest is inside user already
    assert busy == total - 5000 - 40


def test_anything_but_proc_stat_is_refused() -> None:
    with pytest.raises(ValueError, match="not /proc/stat"):
        machine_ticks("intr 1 2 3\n")


def test_only_listening_sockets_on_the_port_are_found() -> None:
    assert listening_inodes(NET_TCP, 0x3C48) == {"1233811"}  # not the connection on it
    assert listening_inodes(NET_TCP, 2024) == {"166"}
    assert listening_inodes(NET_TCP6, 19092) == {"1230976"}
    assert listening_inodes(NET_TCP, 19092) == set()


@pytest.mark.parametrize(
    ("title", "database"),
    [
        ("postgres: postgres bench_pipe_orders 127.0.0.1(59592) idle", "bench_pipe_orders"),
        ("postgres: app shop [local] SELECT", "shop"),
        ("postgres: main: postgres shop 10.0.0.7(5432) idle in transaction", "shop"),
        ("postgres: checkpointer", None),
        ("postgres: autovacuum worker shop", None),
        ("postgres: logical replication launcher", None),
        ("/usr/lib/postgresql/15/bin/postgres -p 15432 -c max_connections=200", None),
    ],
)
def test_a_backend_is_told_from_a_background_process_by_its_title(
    title: str, database: str | None
) -> None:
    assert postgres_database(title) == database


def test_cpu_per_order_is_milliseconds_per_order_charged() -> None:
    assert per_order_ms(1.5, 300) == pytest.approx(5.0)
    assert math.isnan(per_order_ms(1.5, 0))  # nothing charged: no figure, not infinity


def test_the_ceiling_is_what_the_cores_do_at_the_floor_s_cost() -> None:
    assert ceiling(2, 4.0) == pytest.approx(500.0)
    assert ceiling(2, 16.0) == pytest.approx(125.0)
    assert ceiling(2, 0.0) == math.inf


def test_a_window_charges_each_component_what_its_processes_used_in_it() -> None:
    before = Snapshot(
        at=10.0,
        ticks={1: ("orders", 100), 2: ("postgres orders", 50), 3: ("postgres orders", 70)},
        machine_busy=1000,
        machine_total=4000,
    )
    after = Snapshot(
        at=12.0,
        ticks={
            1: ("orders", 100 + 3 * TICKS),
            2: ("postgres orders", 50 + TICKS),
            # A backend opened in the window: all it used is charged.
            4: ("postgres orders", TICKS),
            # A pid reused by another component: its count starts again.
            3: (POSTGRES_OTHER, TICKS // 2),
        },
        machine_busy=1000 + 7 * TICKS,
        machine_total=4000 + 8 * TICKS,
    )
    usage = usage_between(before, after, ["orders", "postgres orders", BENCH_READS])
    assert usage.seconds == pytest.approx(2.0)
    assert usage.cpu == pytest.approx(
        {"orders": 3.0, "postgres orders": 2.0, BENCH_READS: 0.0, POSTGRES_OTHER: 0.5}
    )
    assert usage.machine_busy == pytest.approx(7.0)
    assert usage.counted() == pytest.approx(5.5)


def test_windows_add_up_and_a_part_keeps_only_its_processes() -> None:
    placing = Usage(2.0, {"client": 1.0, "server": 0.5}, 3.0)
    answering = Usage(1.0, {"client": 0.25, "broker": 0.1}, 1.5)
    both = placing + answering
    assert both == Usage(3.0, {"client": 1.25, "server": 0.5, "broker": 0.1}, 4.5)
    assert both.only(["client", "server"]).cpu == {"client": 1.25, "server": 0.5}
