"""Programs the tests run as real, separate processes (``python -m ...``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.infra import REPO_ROOT
from tests.support.waiting import wait_for


@dataclass
class PythonProcess:
    """A ``python -m <module>`` child with its output in a log file."""

    module: str
    popen: subprocess.Popen[bytes]
    log_file: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self, last_lines: int = 60) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-last_lines:])

    async def exited(self, within: float = 20) -> int:
        """Wait until the process has exited; return its exit code."""
        try:
            await wait_for(
                lambda: self.popen.poll() is not None,
                timeout=within,
                message=f"{self.module} (pid {self.pid}) did not exit",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log:\n{self.log()}") from None
        return self.popen.wait()

    async def kill(self) -> None:
        """SIGKILL: no chance to finish, commit or clean up anything."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        await self.exited(within=10)

    async def terminate(self, within: float = 20) -> int:
        """SIGTERM and wait; return the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        return await self.exited(within)


@dataclass
class Processes:
    """Starts child processes and guarantees none outlives the test (``processes`` fixture)."""

    log_dir: Path
    started: list[PythonProcess] = field(default_factory=list)

    def start(
        self,
        module: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> PythonProcess:
        label = name or module.rsplit(".", 1)[-1]
        log_file = self.log_dir / f"{label}-{len(self.started)}.log"
        environment = {**os.environ, **(env or {})}
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")])
        )
        environment.setdefault("PYTHONUNBUFFERED", "1")
        with log_file.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=REPO_ROOT,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        process = PythonProcess(module, popen, log_file)
        self.started.append(process)
        return process

    def kill_all(self) -> None:
        """Last resort at teardown: nothing a test started may keep running."""
        for process in self.started:
            if process.alive():
                with contextlib.suppress(ProcessLookupError):
                    process.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=10)
