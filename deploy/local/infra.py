"""Real Kafka and PostgreSQL as local processes on 127.0.0.1, no Docker needed.

* Apache Kafka 4.1.1, KRaft combined mode (broker + controller), one node, run
  with ``java -cp`` from jars that Maven resolves once (``deploy/local/pom.xml``)
  into ``${XDG_CACHE_HOME:-~/.cache}/partner-marketplace/kafka-4.1.1/lib``.
* PostgreSQL 15 from ``/usr/lib/postgresql/15/bin`` (``MARKETPLACE_PG_BIN``
  overrides). Postgres refuses to run as root, so as root its commands go
  through ``runuser -u postgres --``.

Standard library only: this runs before the project's dependencies are
installed and is imported by the test harness as ``deploy.local.infra``.

CLI::

    python deploy/local/infra.py up     [--state-dir D] [--kafka-port P] ...
    python deploy/local/infra.py status [--state-dir D]
    python deploy/local/infra.py down   [--state-dir D]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DATABASES",
    "KAFKA_VERSION",
    "InfraError",
    "KafkaLogin",
    "KafkaServer",
    "PortInUseError",
    "PostgresServer",
    "ensure_kafka_jars",
    "free_port",
    "kafka_jars_dir",
    "kafka_status",
    "port_open",
    "postgres_status",
    "remove_state",
    "start_kafka",
    "start_postgres",
    "stop_kafka",
    "stop_postgres",
]

KAFKA_VERSION = "4.1.1"
DATABASES = ("catalog", "orders", "settlement")

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.properties"
DEFAULT_STATE_DIR = HERE / "state"
HOST = "127.0.0.1"

KAFKA_READY_LINE = b"Kafka Server started"
KAFKA_START_TIMEOUT = 90.0
PG_START_TIMEOUT = 60
_LOG_ROTATE_BYTES = 16 * 1024 * 1024
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for ".s.PGSQL.<port>.lock"
_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class InfraError(RuntimeError):
    """A local server could not be prepared, started or stopped."""


class PortInUseError(InfraError):
    """The requested port is held by a process that is not ours."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    """True while pid is a live process (zombies count as dead; ours are reaped)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] not in (["Z"], ["X"])


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _tail(path: Path, lines: int = 40, start: int = 0) -> str:
    try:
        with path.open("rb") as f:
            f.seek(start)
            data = f.read()
    except OSError:
        return f"(no log at {path})"
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    return "\n".join(text) or "(log is empty)"


def _terminate(pid: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM, wait up to timeout, then SIGKILL as a last resort."""

    def wait(limit: float) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return True
            if not _pid_alive(pid):
                return True
            time.sleep(0.1)
        return False

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait(timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    if not wait(10.0):
        raise InfraError(f"process {pid} survived SIGKILL")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _rotate(log: Path) -> None:
    with contextlib.suppress(OSError):
        if log.stat().st_size > _LOG_ROTATE_BYTES:
            log.replace(log.with_name(log.name + ".1"))


# --------------------------------------------------------------------------- kafka jars


def kafka_jars_dir() -> Path:
    """Where the broker's jars are cached (the folder may not exist yet)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "partner-marketplace" / f"kafka-{KAFKA_VERSION}" / "lib"


_COMPLETE_MARKER = ".complete"


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def _jars_complete(lib: Path, digest: str) -> bool:
    try:
        return (lib / _COMPLETE_MARKER).read_text().strip() == digest
    except OSError:
        return False


def ensure_kafka_jars() -> Path:
    """Resolve Kafka's runtime jars with Maven once; later calls return at once.

    Maven writes into a temporary folder that is renamed into place only when
    complete, so an interrupted download is never taken for a finished one.
    """
    lib = kafka_jars_dir()
    digest = _pom_digest()
    if _jars_complete(lib, digest):
        return lib
    with _file_lock(lib.parent / ".lock"):
        if _jars_complete(lib, digest):
            return lib
        mvn = shutil.which("mvn")
        if mvn is None:
            raise InfraError("Maven (mvn) is needed to fetch Kafka's jars: apt-get install maven")
        for stale in lib.parent.glob("lib.*-*"):  # left by an interrupted run; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = lib.parent / f"lib.tmp-{os.getpid()}"
        cmd = [
            mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=HERE)
        broker_jar = tmp / f"kafka_2.13-{KAFKA_VERSION}.jar"
        if proc.returncode != 0 or not broker_jar.is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            out = (proc.stdout + proc.stderr).strip().splitlines()[-40:]
            raise InfraError(
                f"mvn could not resolve Kafka's jars (exit {proc.returncode}):\n" + "\n".join(out)
            )
        (tmp / _COMPLETE_MARKER).write_text(digest + "\n")
        if lib.exists():
            old = lib.parent / f"lib.old-{os.getpid()}"
            lib.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(lib)
    return lib


# --------------------------------------------------------------------------- kafka


def _kafka_dir(state_dir: Path) -> Path:
    return state_dir.resolve() / "kafka"


@dataclass
class KafkaServer:
    """A running single-node broker. ``bootstrap`` is what clients connect to."""

    state_dir: Path
    port: int
    controller_port: int
    pid: int
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        return _kafka_dir(self.state_dir) / "kafka.log"

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after timeout seconds."""
        _terminate(self.pid, timeout, self._proc)
        with contextlib.suppress(FileNotFoundError):
            if _read_pid(_kafka_dir(self.state_dir) / "kafka.pid") == self.pid:
                (_kafka_dir(self.state_dir) / "kafka.pid").unlink()


def _is_our_kafka(pid: int, props: Path) -> bool:
    cmd = _cmdline(pid)
    return _pid_alive(pid) and b"kafka.Kafka" in cmd and os.fsencode(props) in cmd


def _read_props(props: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in props.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                out[key.strip()] = value.strip()
    return out


def _kafka_ports(props: Path) -> tuple[int, int] | None:
    values = _read_props(props)
    try:
        port = int(values["advertised.listeners"].rsplit(":", 1)[1])
        cport = int(values["controller.quorum.voters"].rsplit(":", 1)[1])
    except (KeyError, ValueError, IndexError):
        return None
    return port, cport


def kafka_status(state_dir: Path) -> KafkaServer | None:
    """The broker of state_dir if its process is alive, else None."""
    kdir = _kafka_dir(state_dir)
    pid = _read_pid(kdir / "kafka.pid")
    ports = _kafka_ports(kdir / "server.properties")
    if pid is None or ports is None or not _is_our_kafka(pid, kdir / "server.properties"):
        return None
    return KafkaServer(state_dir.resolve(), ports[0], ports[1], pid)


@dataclass(frozen=True)
class KafkaLogin:
    """Clients log in with SCRAM-SHA-512 and are authorized by ACLs (as in deploy/k8s).

    ``users`` maps each user to its password; the credentials are written into
    the storage at format time, so a broker is started once with them. ``admin``
    (one of the users) is the super user who may create topics and ACLs; nobody
    else may do anything until an ACL allows it. With ``tls_pem`` (the broker's
    private key, unencrypted PKCS#8, then its certificate chain, in one PEM file)
    and ``tls_ca`` (the CA certificate that signed it, which the broker's own
    client side checks it against at start) the client listener is SASL_SSL,
    else SASL_PLAINTEXT. The controller's own
    listener stays plaintext and trusted, as the broker reaches it as ANONYMOUS:
    fit for a throwaway broker on 127.0.0.1, not for a shared one.
    """

    admin: str
    users: Mapping[str, str] = field(repr=False)
    tls_pem: Path | None = None
    tls_ca: Path | None = None

    def __post_init__(self) -> None:
        if self.admin not in self.users:
            raise ValueError(f"the admin {self.admin!r} is not among the users")
        if (self.tls_pem is None) != (self.tls_ca is None):
            raise ValueError("TLS needs both tls_pem and tls_ca")

    @property
    def protocol(self) -> str:
        return "SASL_PLAINTEXT" if self.tls_pem is None else "SASL_SSL"

    def properties(self) -> dict[str, str]:
        listener = self.protocol.lower()
        password = self.users[self.admin]
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{self.admin}" password="{password}";'
        )
        settings = {
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            f"listener.name.{listener}.scram-sha-512.sasl.jaas.config": jaas,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{self.admin};User:ANONYMOUS",
        }
        if self.tls_pem is not None and self.tls_ca is not None:
            settings["ssl.keystore.type"] = "PEM"
            settings["ssl.keystore.location"] = str(self.tls_pem)
            settings["ssl.truststore.type"] = "PEM"
            settings["ssl.truststore.location"] = str(self.tls_ca)
        return settings

    def scram_arguments(self) -> list[str]:
        """``kafka.tools.StorageTool format`` options that store every user's credentials."""
        arguments: list[str] = []
        for name, password in self.users.items():
            arguments += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        return arguments


def _server_properties(
    data: Path, port: int, controller_port: int, login: KafkaLogin | None = None
) -> str:
    listener = "PLAINTEXT" if login is None else login.protocol
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"{listener}://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"{listener}://{HOST}:{port}",
        "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{listener}:{listener}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": listener,
        "log.dirs": str(data),
        "num.partitions": "3",
        "default.replication.factor": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        **({} if login is None else login.properties()),
    }
    lines = ["# Written by deploy/local/infra.py on every start; edits are overwritten."]
    lines += [f"{k}={v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def _cluster_id(kdir: Path) -> str:
    path = kdir / "cluster-id"
    with contextlib.suppress(OSError):
        existing = path.read_text().strip()
        if existing:
            return existing
    while True:  # an id starting with "-" would read as an option on the command line
        cid = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
        if not cid.startswith("-"):
            break
    path.write_text(cid + "\n")
    return cid


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise InfraError("java (17 or newer) is needed to run Kafka: apt-get install default-jre")
    return java


def _jvm_args(heap_mb: int, kdir: Path) -> list[str]:
    return [
        f"-Xms{min(128, heap_mb)}m",
        f"-Xmx{heap_mb}m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-XX:+ExitOnOutOfMemoryError",
        "-XX:-UsePerfData",  # no /tmp/hsperfdata_<user> files
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={kdir}",
    ]


@dataclass
class _KafkaLaunch:
    server: KafkaServer
    log_offset: int | None  # where this start's output begins; None: started by someone else


def _launch_kafka(
    state_dir: Path,
    port: int,
    controller_port: int,
    heap_mb: int,
    login: KafkaLogin | None = None,
) -> _KafkaLaunch:
    kdir = _kafka_dir(state_dir)
    kdir.mkdir(parents=True, exist_ok=True)
    props, pidfile, log = kdir / "server.properties", kdir / "kafka.pid", kdir / "kafka.log"

    pid = _read_pid(pidfile)
    if pid is not None and _is_our_kafka(pid, props):
        running = _kafka_ports(props)
        if running != (port, controller_port):
            raise InfraError(
                f"Kafka of {state_dir} already runs with ports {running} (pid {pid}); "
                f"stop it before starting it on {(port, controller_port)}"
            )
        return _KafkaLaunch(KafkaServer(state_dir.resolve(), port, controller_port, pid), None)
    for p, what in ((port, "Kafka"), (controller_port, "Kafka controller")):
        if port_open(p):
            raise PortInUseError(f"port {p} (for the {what}) is already used by another process")

    lib = ensure_kafka_jars()
    java = _java()
    data = kdir / "data"
    data.mkdir(exist_ok=True)
    props.write_text(_server_properties(data, port, controller_port, login))
    classpath = f"{lib}/*"
    if not (data / "meta.properties").is_file():
        fmt = [
            java, *_jvm_args(256, kdir), "-cp", classpath, "kafka.tools.StorageTool", "format",
            "--cluster-id", _cluster_id(kdir), "--config", str(props), "--ignore-formatted",
            *([] if login is None else login.scram_arguments()),
        ]  # fmt: skip
        done = subprocess.run(fmt, capture_output=True, text=True, check=False, cwd=kdir)
        if done.returncode != 0:
            raise InfraError(
                f"kafka storage format failed (exit {done.returncode}):\n{done.stdout}{done.stderr}"
            )

    _rotate(log)
    cmd = [java, *_jvm_args(heap_mb, kdir), "-cp", classpath, "kafka.Kafka", str(props)]
    with log.open("ab") as out:
        offset = out.tell()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=kdir,
            start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    server = KafkaServer(state_dir.resolve(), port, controller_port, proc.pid, proc)
    return _KafkaLaunch(server, offset)


def _await_kafka(launch: _KafkaLaunch, timeout: float = KAFKA_START_TIMEOUT) -> KafkaServer:
    server = launch.server
    log = server.log_file
    deadline = time.monotonic() + timeout
    while True:
        proc = server._proc
        exited = proc.poll() is not None if proc is not None else not _pid_alive(server.pid)
        if exited:
            code = proc.returncode if proc is not None else "?"
            raise InfraError(
                f"Kafka (pid {server.pid}) exited with {code} before it was ready; "
                f"log {log}:\n{_tail(log, start=launch.log_offset or 0)}"
            )
        if port_open(server.port):
            if launch.log_offset is None:
                return server
            with log.open("rb") as f:
                f.seek(launch.log_offset)
                if KAFKA_READY_LINE in f.read():
                    return server
        if time.monotonic() > deadline:
            server.stop(timeout=10)
            raise InfraError(
                f"Kafka was not ready within {timeout:.0f}s; log {log}:\n"
                f"{_tail(log, start=launch.log_offset or 0)}"
            )
        time.sleep(0.2)


def start_kafka(
    state_dir: Path,
    port: int,
    controller_port: int,
    *,
    heap_mb: int = 512,
    login: KafkaLogin | None = None,
) -> KafkaServer:
    """Start (or find already running) a KRaft single-node broker; return once it serves.

    Data, config, cluster id, pidfile and log live in ``<state_dir>/kafka``.
    Without ``login`` anyone may do anything; a login applies from the first
    start of a state dir on (its users are stored when the storage is formatted).
    """
    return _await_kafka(_launch_kafka(state_dir, port, controller_port, heap_mb, login))


def stop_kafka(state_dir: Path, timeout: float = 60.0) -> bool:
    """Stop the broker recorded in state_dir's pidfile. False if none was running."""
    server = kafka_status(state_dir)
    pidfile = _kafka_dir(state_dir) / "kafka.pid"
    if server is None:
        pidfile.unlink(missing_ok=True)
        return False
    server.stop(timeout)
    return True


# --------------------------------------------------------------------------- postgres


def _pg_bin(name: str) -> str:
    bindir = Path(os.environ.get("MARKETPLACE_PG_BIN", "/usr/lib/postgresql/15/bin"))
    exe = bindir / name
    if not exe.is_file():
        raise InfraError(f"{exe} not found: apt-get install postgresql (or set MARKETPLACE_PG_BIN)")
    return str(exe)


def _is_root() -> bool:
    return os.geteuid() == 0


def _as_pg_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if _is_root() else cmd


def _postgres_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise InfraError(
            "running as root needs a 'postgres' user to run PostgreSQL as "
            "(apt-get install postgresql creates it)"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _short_tmp_dir(prefix: str, key: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(key)).hexdigest()[:12]
    return Path("/tmp") / f"{prefix}-{digest}"  # noqa: S108 - private, owner-checked below


def _pg_root(state_dir: Path) -> Path:
    """Folder holding data/, the log and the socket dir (see _prepare_pg_root)."""
    home = state_dir.resolve() / "postgres"
    pointer = home / "relocated-to"
    with contextlib.suppress(OSError):
        target = pointer.read_text().strip()
        if target:
            return Path(target)
    return home


def _prepare_pg_root(state_dir: Path) -> Path:
    """Create the postgres folder, owned by the user postgres runs as.

    As root, postgres must be able to reach the folder; a state dir under a
    private parent (pytest's /tmp/pytest-of-root is 0700) cannot be reached, so
    the cluster then lives in /tmp/pm-pg-<hash> and a pointer file says so.
    """
    home = state_dir.resolve() / "postgres"
    home.mkdir(parents=True, exist_ok=True)
    if not _is_root():
        return home
    uid, gid = _postgres_ids()
    root = _pg_root(state_dir)
    if root == home:
        _chown_tree(home, uid, gid)
        probe = ["runuser", "-u", "postgres", "--", "test", "-w", str(home), "-a", "-x", str(home)]
        if subprocess.run(probe, check=False, cwd="/").returncode == 0:
            return home
        root = _short_tmp_dir("pm-pg", home)
    root.mkdir(mode=0o700, exist_ok=True)
    st = root.stat()
    if st.st_uid not in (0, uid) or root.is_symlink():
        raise InfraError(f"{root} belongs to uid {st.st_uid}; remove it")
    _chown_tree(root, uid, gid)
    (home / "relocated-to").write_text(f"{root}\n")
    return root


def _socket_dir(root: Path) -> Path:
    candidate = root / "run"
    if len(os.fsencode(candidate)) + len("/.s.PGSQL.65535.lock") < _SOCKET_PATH_MAX:
        return candidate
    return _short_tmp_dir("pm-pgsock", root)


@dataclass
class PostgresServer:
    """A running PostgreSQL cluster; ``dsn(db)`` gives a libpq/asyncpg URL."""

    state_dir: Path
    port: int
    data_dir: Path
    pid: int

    @property
    def dsn_base(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}"

    def dsn(self, database: str = "postgres") -> str:
        return f"{self.dsn_base}/{database}"

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    def stop(self, timeout: float = 60.0) -> None:
        """``pg_ctl stop -m fast``; ``-m immediate`` if that does not finish in time."""
        _pg_ctl_stop(self.data_dir, self.pid, timeout)


def _pg_ctl_stop(data: Path, pid: int, timeout: float) -> None:
    for mode in ("fast", "immediate"):
        cmd = [
            _pg_bin("pg_ctl"), "stop", "-D", str(data), "-m", mode,
            "-w", "-t", str(int(timeout)),
        ]  # fmt: skip
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                _as_pg_user(cmd),
                capture_output=True,
                check=False,
                cwd=data.parent,
                timeout=timeout + 10,
            )
        if not _pid_alive(pid):
            return
    _terminate(pid, 5.0)


def _postmaster(data: Path) -> tuple[int, int] | None:
    """(pid, port) from postmaster.pid if that postmaster is alive."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    return (pid, port) if _pid_alive(pid) else None


def postgres_status(state_dir: Path) -> PostgresServer | None:
    """The cluster of state_dir if its postmaster is alive, else None."""
    data = _pg_root(state_dir) / "data"
    found = _postmaster(data)
    if found is None:
        return None
    return PostgresServer(state_dir.resolve(), found[1], data, found[0])


def _run_checked(cmd: list[str], what: str, cwd: Path) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd)
    if done.returncode != 0:
        raise InfraError(f"{what} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def _psql(port: int, sql: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        _pg_bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        "-h", HOST, "-p", str(port), "-U", "postgres", "-d", "postgres", "-c", sql,
    ]  # fmt: skip
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd, env=env)


def _create_databases(port: int, databases: Sequence[str], cwd: Path) -> None:
    for name in databases:
        if not _DB_NAME.fullmatch(name):
            raise ValueError(f"not a plain database name: {name!r}")
    listed = _psql(port, "SELECT datname FROM pg_database", cwd)
    if listed.returncode != 0:
        raise InfraError(f"psql could not list databases:\n{listed.stderr}")
    existing = set(listed.stdout.split())
    for name in databases:
        if name in existing:
            continue
        made = _psql(port, f'CREATE DATABASE "{name}"', cwd)
        if made.returncode != 0 and "already exists" not in made.stderr:
            raise InfraError(f"could not create database {name}:\n{made.stderr}")


def start_postgres(
    state_dir: Path, port: int, *, durable: bool, databases: Sequence[str]
) -> PostgresServer:
    """Start (initdb first if new, or find already running) a cluster; create databases.

    ``durable=False`` turns off fsync, synchronous_commit and full_page_writes:
    fine for throwaway test clusters, never for data anyone keeps.
    """
    root = _prepare_pg_root(state_dir)
    data, log = root / "data", root / "postgres.log"

    running = _postmaster(data)
    if running is not None:
        pid, running_port = running
        if running_port != port:
            raise InfraError(
                f"PostgreSQL of {state_dir} already runs on port {running_port} (pid {pid}); "
                f"stop it before starting it on {port}"
            )
        deadline = time.monotonic() + PG_START_TIMEOUT
        while not port_open(port):
            if time.monotonic() > deadline or not _pid_alive(pid):
                raise InfraError(f"PostgreSQL pid {pid} does not answer on port {port}; see {log}")
            time.sleep(0.2)
    else:
        if port_open(port):
            raise PortInUseError(
                f"port {port} is already used by another process (another PostgreSQL?); "
                f"stop it or choose another port"
            )
        if not (data / "PG_VERSION").is_file():
            shutil.rmtree(data, ignore_errors=True)  # a half-done initdb
            initdb = [
                _pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--locale=C.UTF-8",
            ]  # fmt: skip
            if not durable:
                initdb.append("--no-sync")
            _run_checked(_as_pg_user(initdb), "initdb", root)
        sockets = _socket_dir(root)
        sockets.mkdir(mode=0o700, exist_ok=True)
        if _is_root():
            os.chown(sockets, *_postgres_ids())
        options = [
            f"-p {port}",
            f"-c listen_addresses={HOST}",
            f"-c unix_socket_directories={shlex.quote(str(sockets))}",
            "-c max_connections=200",
        ]
        if not durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        _rotate(log)
        pg_ctl = [
            _pg_bin("pg_ctl"), "start", "-w", "-t", str(PG_START_TIMEOUT), "-D", str(data),
            "-l", str(log), "-o", " ".join(options),
        ]  # fmt: skip
        done = subprocess.run(
            _as_pg_user(pg_ctl),
            capture_output=True,
            text=True,
            check=False,
            cwd=root,
            start_new_session=True,  # keep the postmaster out of our terminal's signals
        )
        running = _postmaster(data)
        if done.returncode != 0 or running is None:
            raise InfraError(
                f"pg_ctl start failed (exit {done.returncode}): {done.stderr.strip()}\n"
                f"log {log}:\n{_tail(log)}"
            )
    server = PostgresServer(state_dir.resolve(), port, data, running[0])
    _create_databases(port, databases, root)
    return server


def stop_postgres(state_dir: Path, timeout: float = 60.0) -> bool:
    """Stop the cluster of state_dir (from its postmaster.pid). False if none was running."""
    server = postgres_status(state_dir)
    if server is None:
        return False
    server.stop(timeout)
    return True


def remove_state(state_dir: Path) -> None:
    """Stop both servers of state_dir and delete all their files.

    This includes the folders outside state_dir that a root run may have used
    (the relocated cluster and a short socket folder under /tmp).
    """
    stop_kafka(state_dir)
    stop_postgres(state_dir)
    root = _pg_root(state_dir)
    shutil.rmtree(_socket_dir(root), ignore_errors=True)
    if root != state_dir.resolve() / "postgres":
        shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(state_dir, ignore_errors=True)


# --------------------------------------------------------------------------- CLI


def _preflight(args: argparse.Namespace) -> None:
    """Fail before starting anything if a port is held by a process that is not ours."""
    state: Path = args.state_dir
    wanted: list[tuple[int, str]] = []
    if kafka_status(state) is None:
        wanted += [(args.kafka_port, "Kafka"), (args.kafka_controller_port, "Kafka controller")]
    if postgres_status(state) is None:
        wanted.append((args.pg_port, "PostgreSQL"))
    for port, what in wanted:
        if port_open(port):
            raise PortInUseError(
                f"port {port} (for {what}) is already used by another process; "
                f"stop that process or pick another port (see --help)"
            )


def _cmd_up(args: argparse.Namespace) -> int:
    state: Path = args.state_dir
    _preflight(args)
    t0 = time.monotonic()
    lib = ensure_kafka_jars()
    t_jars = time.monotonic()
    launch = _launch_kafka(state, args.kafka_port, args.kafka_controller_port, args.kafka_heap_mb)
    try:
        pg = start_postgres(state, args.pg_port, durable=args.durable, databases=DATABASES)
    except BaseException:
        if launch.log_offset is not None:  # started by this call: do not leave it half up
            launch.server.stop(timeout=30)
        raise
    t_pg = time.monotonic()
    kafka = _await_kafka(launch)
    t_kafka = time.monotonic()
    print(f"jars      {lib} ({t_jars - t0:.1f}s)")
    print(
        f"kafka     {kafka.bootstrap} pid {kafka.pid} "
        f"(ready {t_kafka - t_jars:.1f}s after launch) log {kafka.log_file}"
    )
    print(
        f"postgres  {HOST}:{pg.port} pid {pg.pid} ({t_pg - t_jars:.1f}s) "
        f"databases {', '.join(DATABASES)} log {pg.log_file}"
    )
    print(f"MARKETPLACE_KAFKA_BOOTSTRAP={kafka.bootstrap}")
    print(f"MARKETPLACE_PG_DSN_BASE={pg.dsn_base}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    state: Path = args.state_dir
    print("kafka     " + ("stopped" if stop_kafka(state) else "was not running"))
    print("postgres  " + ("stopped" if stop_postgres(state) else "was not running"))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    state: Path = args.state_dir
    kafka, pg = kafka_status(state), postgres_status(state)
    if kafka is None:
        print("kafka     not running")
    else:
        answers = "serving" if port_open(kafka.port) else "NOT answering"
        print(f"kafka     {kafka.bootstrap} pid {kafka.pid} {answers}")
    if pg is None:
        print("postgres  not running")
    else:
        answers = "serving" if port_open(pg.port) else "NOT answering"
        print(f"postgres  {HOST}:{pg.port} pid {pg.pid} {answers} data {pg.data_dir}")
    return 0 if kafka is not None and pg is not None else 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="infra.py",
        description="Run a real Kafka and PostgreSQL as local processes on 127.0.0.1.",
    )
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="data, config, logs and pidfiles (default: %(default)s)",
    )
    parser.add_argument("--kafka-port", type=int, default=9092)
    parser.add_argument("--kafka-controller-port", type=int, default=9093)
    parser.add_argument("--kafka-heap-mb", type=int, default=512)
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument(
        "--no-durable",
        dest="durable",
        action="store_false",
        help="PostgreSQL with fsync/synchronous_commit/full_page_writes off (throwaway data)",
    )
    args = parser.parse_args(argv)
    args.state_dir = args.state_dir.resolve()
    handlers = {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status}
    try:
        return handlers[args.command](args)
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
