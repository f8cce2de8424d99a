"""Where the machine's CPU goes, by component, read from Linux's /proc.

Each process's user plus system time (``/proc/<pid>/stat``) is read before
and after a window and the difference charged to its component: a service,
the load generator, the Kafka broker (the process listening on the bootstrap
port), PostgreSQL's backends grouped by the database they serve, or
PostgreSQL's own background processes ("postgres other": the postmaster's
other children and the postmaster itself).  Backends of databases that are
not the bench's belong to whoever else shares the server and are left out,
as is everything else the machine runs; ``/proc/stat`` gives the machine's
busy time over the same window, so that "rest of machine" is what the
components do not explain.

The parsing is pure (text in, numbers out) so that it is tested without /proc.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
POSTGRES_OTHER = "postgres other"
BENCH_READS = "postgres, bench's reads"  # the bench's own queries: measuring, not the pipeline
# A backend's process title: "postgres: <user> <database> <host>(<port>) <activity>",
# the host "[local]" over a Unix socket; a cluster name may come first ("main: ").
_BACKEND = re.compile(r"^postgres: (?:\S+: )?(\S+) (\S+) (\[local\]|\S+\(\d+\))")
_LISTEN = "0A"  # /proc/net/tcp's state code for a listening socket


def process_ticks(stat: str) -> int:
    """utime + stime, in clock ticks, from the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may hold spaces, so the
    fields are counted from its closing parenthesis.
    """
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def parent_pid(stat: str) -> int:
    return int(stat.rsplit(")", 1)[1].split()[1])


def machine_ticks(proc_stat: str) -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs so far, from the text of ``/proc/stat``.

    The first line sums every CPU: user nice system idle iowait irq softirq
    steal guest guest_nice.  Guest time is already inside user and nice, so the
    total is the first eight; idle and iowait are the time nothing ran.
    """
    first = proc_stat.splitlines()[0].split()
    if first[0] != "cpu":
        raise ValueError(f"not /proc/stat: {first[:1]}")
    ticks = [int(value) for value in first[1:9]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


def listening_inodes(net_tcp: str, port: int) -> set[str]:
    """Socket inodes listening on ``port``, from ``/proc/net/tcp`` or ``tcp6``."""
    inodes: set[str] = set()
    for line in net_tcp.splitlines()[1:]:
        columns = line.split()
        if len(columns) < 10 or columns[3] != _LISTEN:
            continue
        if int(columns[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(columns[9])
    return inodes


def postgres_database(cmdline: str) -> str | None:
    """The database a PostgreSQL backend serves, from its process title; None if no backend."""
    match = _BACKEND.match(cmdline)
    return match.group(2) if match else None


def per_order_ms(cpu_seconds: float, orders: int) -> float:
    """Milliseconds of CPU per order; NaN when no order was charged (nothing to divide by)."""
    return cpu_seconds * 1000 / orders if orders else float("nan")


def ceiling(cores: int, floor_ms: float) -> float:
    """Orders/s that ``cores`` could do if each order cost only ``floor_ms`` of CPU."""
    return cores * 1000 / floor_ms if floor_ms > 0 else float("inf")


def pid_listening(port: int) -> int | None:
    """The process with a socket listening on ``port`` (we must be able to read its fds)."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            inodes |= listening_inodes((PROC / "net" / table).read_text(), port)
        except OSError:
            continue
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for process in PROC.iterdir():
        if not process.name.isdigit():
            continue
        try:
            for fd in (process / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return int(process.name)
        except OSError:  # gone, or not ours to read
            continue
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cpu_seconds_of(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far; None once it is gone."""
    stat = _read(PROC / str(pid) / "stat")
    return None if stat is None else process_ticks(stat) / os.sysconf("SC_CLK_TCK")


def backends_cpu(database: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving ``database``, by pid."""
    found: dict[int, float] = {}
    for process in PROC.iterdir():
        if not process.name.isdigit():
            continue
        try:
            title = (process / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        if postgres_database(title) == database:
            cpu = cpu_seconds_of(int(process.name))
            if cpu is not None:
                found[int(process.name)] = cpu
    return found


def _children(parent: int) -> list[int]:
    found: list[int] = []
    for process in PROC.iterdir():
        if process.name.isdigit():
            stat = _read(process / "stat")
            if stat is not None and parent_pid(stat) == parent:
                found.append(int(process.name))
    return found


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic()
    ticks: dict[int, tuple[str, int]]  # pid -> (component, ticks so far)
    machine_busy: int
    machine_total: int


@dataclass(frozen=True)
class Usage:
    """CPU seconds each component used over a window, and the machine's busy time."""

    seconds: float  # wall-clock length of the window
    cpu: dict[str, float]
    machine_busy: float  # CPU seconds, all cores

    def counted(self) -> float:
        return sum(self.cpu.values())

    def __add__(self, other: Usage) -> Usage:
        cpu = dict(self.cpu)
        for name, used in other.cpu.items():
            cpu[name] = cpu.get(name, 0.0) + used
        return Usage(self.seconds + other.seconds, cpu, self.machine_busy + other.machine_busy)

    def only(self, names: Iterable[str]) -> Usage:
        kept = set(names)
        return Usage(
            self.seconds, {n: s for n, s in self.cpu.items() if n in kept}, self.machine_busy
        )


def usage_between(before: Snapshot, after: Snapshot, components: Iterable[str]) -> Usage:
    """What each component used from ``before`` to ``after``.

    A process that started in the window is charged all it used; one that
    ended in it is lost (pools keep their connections, so few do).
    """
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = dict.fromkeys(components, 0.0)
    for pid, (name, now) in after.ticks.items():
        earlier = before.ticks.get(pid)
        then = earlier[1] if earlier is not None and earlier[0] == name else 0
        cpu[name] = cpu.get(name, 0.0) + (now - then) / ticks
    return Usage(
        seconds=after.at - before.at,
        cpu=cpu,
        machine_busy=(after.machine_busy - before.machine_busy) / ticks,
    )


@dataclass
class CpuMeter:
    """Knows which processes are which component; takes snapshots of their CPU time.

    ``processes``: component name -> pid (services, the load generator, the broker).
    ``postmaster``: the PostgreSQL server's pid; its backends of ``databases``
    (database name -> component) are charged there, the rest of its children
    and itself to "postgres other".  ``own_backends`` gives the backend pids
    of the bench's own connections (its ledger reads), charged to a component
    of their own rather than to the database they read.
    """

    processes: dict[str, int]
    postmaster: int | None = None
    databases: Mapping[str, str] = field(default_factory=dict)
    own_backends: Callable[[], Iterable[int]] = lambda: ()

    def components(self) -> list[str]:
        names = list(self.processes)
        names += list(dict.fromkeys(self.databases.values()))
        if self.postmaster is not None:
            names += [BENCH_READS, POSTGRES_OTHER]
        return names

    def snapshot(self) -> Snapshot:
        ticks: dict[int, tuple[str, int]] = {}
        for name, pid in self.processes.items():
            stat = _read(PROC / str(pid) / "stat")
            if stat is not None:
                ticks[pid] = (name, process_ticks(stat))
        if self.postmaster is not None:
            self._postgres(self.postmaster, ticks)
        busy, total = machine_ticks((PROC / "stat").read_text())
        return Snapshot(time.monotonic(), ticks, busy, total)

    def _postgres(self, postmaster: int, ticks: dict[int, tuple[str, int]]) -> None:
        own = set(self.own_backends())
        for pid in [postmaster, *_children(postmaster)]:
            stat, cmdline = _read(PROC / str(pid) / "stat"), _read(PROC / str(pid) / "cmdline")
            if stat is None or cmdline is None:
                continue
            database = postgres_database(cmdline.replace("\0", " ").strip())
            if pid in own:
                name = BENCH_READS
            elif database is None:
                name = POSTGRES_OTHER
            elif database in self.databases:
                name = self.databases[database]
            else:
                continue  # someone else's database on a shared server
            ticks[pid] = (name, process_ticks(stat))

    def usage_since(self, before: Snapshot) -> Usage:
        return usage_between(before, self.snapshot(), self.components())
