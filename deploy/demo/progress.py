"""A progress bar on stderr: redrawn in place on a terminal, a few plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


def bar(done: int, total: int, *, label: str, elapsed: float) -> str:
    """One line: ``[#####.....]  50/100 orders placed  25.0/s`` (pure)."""
    filled = WIDTH if total == 0 else WIDTH * done // total
    rate = done / elapsed if elapsed > 0 else 0.0
    width = len(str(total))
    return f"[{'#' * filled}{'.' * (WIDTH - filled)}] {done:>{width}}/{total} {label}  {rate:.1f}/s"


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.done = 0
        self._label = label
        self._stream = stream
        self._live = stream.isatty()
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._quarter = 0

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self._live:
            if now - self._drawn_at >= 0.1 or self.done >= self.total:
                self._drawn_at = now
                self._stream.write("\r" + self._line(now))
                self._stream.flush()
        elif self.total and self.done * 4 // self.total > self._quarter:
            self._quarter = self.done * 4 // self.total
            self._stream.write(self._line(now) + "\n")

    def finish(self) -> float:
        """End the bar; the seconds it ran."""
        elapsed = time.monotonic() - self._started
        if self._live:
            self._stream.write("\r" + self._line(time.monotonic()) + "\n")
            self._stream.flush()
        return elapsed

    def _line(self, now: float) -> str:
        return bar(self.done, self.total, label=self._label, elapsed=now - self._started)
