"""A closed-loop HTTP load generator: N workers, each one request at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class Result:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run_load(
    name: str,
    url_of: Callable[[int], str],
    *,
    headers: dict[str, str],
    concurrency: int,
    seconds: float,
    warmup_seconds: float = 1.0,
) -> Result:
    latencies: list[float] = []
    errors = 0
    counter = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        measuring_from = time.perf_counter() + warmup_seconds
        stop_at = measuring_from + seconds

        async def worker() -> None:
            nonlocal errors, counter
            while (started := time.perf_counter()) < stop_at:
                counter += 1
                async with session.get(url_of(counter)) as response:
                    await response.read()
                    failed = response.status != 200
                if started >= measuring_from:
                    latencies.append(time.perf_counter() - started)
                    errors += failed

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(name, len(latencies), errors, seconds, latencies)
