"""The pipeline bench's figures: per-step results, the markdown table and the plot."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.orders_place import Step
from bench.pipeline_limits import KafkaLimit
from bench.pipeline_load import Charged, Placed

P99_BUDGET_MS = 50.0
POOL_SIZE = 10  # MARKETPLACE_DB_POOL_SIZE the bench gives each service
TARGET_ORDERS = 500.0


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p99: float
    p999: float

    @classmethod
    def of_ms(cls, seconds: list[float]) -> Percentiles:
        ms = [s * 1000 for s in seconds]
        return cls(percentile(ms, 0.5), percentile(ms, 0.99), percentile(ms, 0.999))

    def cells(self) -> str:
        return f"{self.p50:,.0f} / {self.p99:,.0f} / {self.p999:,.0f}"


@dataclass(frozen=True)
class StepResult:
    rate: float
    offered: int
    placed: int
    placed_per_s: float
    charged: int
    end_to_end_per_s: float
    drained: bool
    placement: Percentiles
    confirmed: Percentiles
    charged_after: Percentiles
    refused: int

    @classmethod
    def of(
        cls, rate: float, seconds: float, placed: list[Placed], books: dict[str, Charged]
    ) -> StepResult:
        done = [p for p in placed if p.order_id]
        answers = [p.due + p.latency for p in done]
        ours = [(p, books[p.order_id]) for p in done if p.order_id in books]
        charges = [b.charged for _, b in ours]
        return cls(
            rate=rate,
            offered=len(placed),
            placed=len(done),
            # The rate things came out at: count over the span from first to last
            # (never shorter than the step, so a quick pipeline shows the offered rate).
            placed_per_s=len(done) / max(_span(answers), seconds),
            charged=len(ours),
            end_to_end_per_s=len(ours) / max(_span(charges), seconds),
            drained=len(ours) == len(done) and len(done) == len(placed),
            placement=Percentiles.of_ms([p.latency for p in done]),
            confirmed=Percentiles.of_ms([b.confirmed - p.due for p, b in ours]),
            charged_after=Percentiles.of_ms([b.charged - p.due for p, b in ours]),
            refused=len(placed) - len(done),
        )

    def line(self) -> str:
        return (
            f"  offered {self.rate:>5.0f}/s  placed {self.placed_per_s:>5.0f}/s"
            f"  end to end {self.end_to_end_per_s:>5.0f}/s ({self.charged}/{self.offered})"
            f"  placement p50/p99/p99.9 {self.placement.cells()} ms"
            f"  -> confirmed {self.confirmed.cells()}  -> charged {self.charged_after.cells()} ms"
        )

    def sustained(self) -> bool:
        return (
            self.drained
            and self.end_to_end_per_s >= 0.97 * self.rate
            and (self.placement.p99 <= P99_BUDGET_MS)
        )


@dataclass
class Run:
    cores: int
    seconds: float
    steps: list[StepResult] = field(default_factory=list)
    kafka: KafkaLimit | None = None
    events_per_order: float = 0.0
    bare_http: dict[float, Step] = field(default_factory=dict)
    bare_tx: dict[float, Step] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    profiled: str | None = None
    profile: list[tuple[str, float]] = field(default_factory=list)
    # Per offered rate: CPU seconds per second (1.0 = one core) each process used.
    cpu: dict[float, dict[str, float]] = field(default_factory=dict)
    # Per offered rate, per service: mean connections in each activity (pg_stat_activity).
    database: dict[float, dict[str, dict[str, float]]] = field(default_factory=dict)


def hot_spots(raw: str, top: int = 30) -> list[tuple[str, float]]:
    """py-spy's raw (collapsed) stacks: share of on-CPU samples by the innermost frame of
    the project (services/, shared/) and, after the arrow, the innermost frame of all."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        frames = stack.split(";")
        ours = [f for f in frames if "services/" in f or "shared/" in f]
        project = _name(ours[-1]) if ours else "(no project frame)"
        own[f"{project} → {_name(frames[-1])}"] += int(count)
    return [(name, n / total) for name, n in own.most_common(top)] if total else []


def _name(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    function, _, where = frame.partition(" (")
    module = where.rsplit("/", 1)[-1].split(":", 1)[0]
    return f"{function} ({module})" if module else function


def _span(moments: list[float]) -> float:
    return max(moments) - min(moments) if moments else 0.0


def _ratio(value: float, limit: float | None) -> str:
    return f"{value / limit:.0%}" if limit else "n/a"


def markdown(run: Run) -> str:
    out = [
        "# The whole pipeline under increasing offered load",
        "",
        f"`make bench-pipeline`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {run.cores} cores shared "
        "by the three services, Kafka, PostgreSQL, the load generator and the simulated partners "
        f"(and anything else running). Open loop, {run.seconds:g} s per step. An order counts "
        "end to end when settlement's ledger holds its charges (read-only from "
        "`journal_entries`: confirmed = the OrderConfirmed event's `booked_at`, charged = the "
        "booking transaction's `recorded_at`). Latencies count from when the placement was due. "
        "p99.9 of a few hundred samples is their maximum.",
        "",
        "| offered/s | placed/s | end to end/s | x bare aiohttp | x bare asyncpg tx "
        "| placement p50/p99/p99.9 ms | → confirmed ms | → charged ms | charged/offered |",
        "|---:|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for s in run.steps:
        http, tx = run.bare_http.get(s.rate), run.bare_tx.get(s.rate)
        out.append(
            f"| {s.rate:.0f} | {s.placed_per_s:,.0f} | {s.end_to_end_per_s:,.0f} "
            f"| {_ratio(s.end_to_end_per_s, http.achieved if http else None)} "
            f"| {_ratio(s.end_to_end_per_s, tx.achieved if tx else None)} "
            f"| {s.placement.cells()} | {s.confirmed.cells()} | {s.charged_after.cells()} "
            f"| {s.charged}/{s.offered} |"
        )
    out += ["", "Raw limits in the same run, at the same offered loads:", ""]
    out += ["| offered/s | bare aiohttp/s | p50/p99 ms | bare asyncpg tx/s | p50/p99 ms |"]
    out += ["|---:|---:|---|---:|---|"]
    for rate, http in run.bare_http.items():
        tx = run.bare_tx.get(rate)
        tx_cells = (
            f"{tx.achieved:,.0f} | {tx.p50 * 1000:,.1f} / {tx.p99 * 1000:,.1f}" if tx else "|"
        )
        out.append(
            f"| {rate:.0f} | {http.achieved:,.0f} "
            f"| {http.p50 * 1000:,.1f} / {http.p99 * 1000:,.1f} | {tx_cells} |"
        )
    best = max((s for s in run.steps if s.sustained()), key=lambda s: s.rate, default=None)
    peak = max(run.steps, key=lambda s: s.end_to_end_per_s, default=None)
    out += ["", "## Against the targets", ""]
    if run.kafka is not None:
        per_order = run.events_per_order or 1
        produce_orders = run.kafka.produce_per_s / per_order
        consume_orders = run.kafka.consume_per_s / per_order
        out.append(
            f"- aiokafka, the {run.kafka.events:,} events the pipeline published "
            f"({run.events_per_order:.1f} per order) produced again with the services' producer "
            f"settings: {run.kafka.produce_per_s:,.0f} events/s ({produce_orders:,.0f} orders/s); "
            f"consumed with getmany: {run.kafka.consume_per_s:,.0f} events/s "
            f"({consume_orders:,.0f} orders/s)."
        )
        if peak is not None:
            out.append(
                f"- Peak end to end {peak.end_to_end_per_s:,.0f} orders/s = "
                f"{_ratio(peak.end_to_end_per_s, produce_orders)} of the Kafka produce limit, "
                f"{_ratio(peak.end_to_end_per_s, consume_orders)} of the consume limit."
            )
    if best is not None:
        out.append(
            f"- Best step sustained end to end (≥ 97 % of offered charged, every order drained, "
            f"p99 placement ≤ {P99_BUDGET_MS:.0f} ms): {best.rate:.0f} orders/s offered, "
            f"{best.end_to_end_per_s:,.0f}/s achieved, p99 placement {best.placement.p99:,.0f} ms "
            f"(target ≥ {TARGET_ORDERS:.0f}/s with p99 < {P99_BUDGET_MS:.0f} ms)."
        )
    else:
        out.append("- No step sustained its offered rate with p99 placement ≤ 50 ms.")
    out.append(f"- Partners' calls that succeeded: {run.accepted}.")
    if run.cpu:
        names = list(next(iter(run.cpu.values())))
        out += [
            "",
            "## CPU each process used per step (placing and draining; 1.00 = one core)",
            "",
            "| offered/s | " + " | ".join(names) + " |",
            "|---:|" + "---:|" * len(names),
        ]
        out += [
            f"| {rate:.0f} | " + " | ".join(f"{used.get(n, 0):.2f}" for n in names) + " |"
            for rate, used in run.cpu.items()
        ]
    if run.database:
        out += [
            "",
            "## What each service's database connections were doing (mean count, sampled 4/s)",
            "",
            f"Each service has a pool of {POOL_SIZE}; 'running' is PostgreSQL executing, "
            "'idle in transaction' the service holding a transaction open between statements.",
            "",
            "| offered/s | service | busy connections | top activities |",
            "|---:|---|---:|---|",
        ]
        for rate, services in run.database.items():
            for service, doing in sorted(services.items()):
                top = sorted(doing.items(), key=lambda item: -item[1])[:4]
                out.append(
                    f"| {rate:.0f} | {service} | {sum(doing.values()):.1f} | "
                    + ", ".join(f"{what} {mean:.1f}" for what, mean in top)
                    + " |"
                )
    if run.profile:
        out += [
            "",
            f"## Where {run.profiled}'s time goes",
            "",
            "py-spy (50 Hz, on-CPU samples) on the service from the first profiled step on; "
            "share of samples by the innermost project frame → the innermost frame:",
            "",
            "| share | frame |",
            "|---:|---|",
        ]
        out += [f"| {share:.1%} | `{name}` |" for name, share in run.profile]
    return "\n".join(out) + "\n"


def plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [s.rate for s in run.steps]
    figure, (rate_axis, latency_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    rate_axis.plot(rates, rates, "k:", label="offered")
    rate_axis.plot(rates, [s.placed_per_s for s in run.steps], "o-", label="placed (201)")
    rate_axis.plot(
        rates, [s.end_to_end_per_s for s in run.steps], "o-", label="charged (end to end)"
    )
    for name, steps in (("bare aiohttp", run.bare_http), ("bare asyncpg tx", run.bare_tx)):
        rate_axis.plot(list(steps), [s.achieved for s in steps.values()], "x--", label=name)
    rate_axis.set(xlabel="offered orders/s", ylabel="achieved /s", xscale="log", yscale="log")
    rate_axis.set_title("Throughput")
    rate_axis.legend(fontsize=8)
    for label, pick, style in (
        ("placement", "placement", "-"),
        ("→ confirmed", "confirmed", "--"),
        ("→ charged", "charged_after", ":"),
    ):
        for fraction, attribute in (("p50", "p50"), ("p99", "p99"), ("p99.9", "p999")):
            latency_axis.plot(
                rates,
                [getattr(getattr(s, pick), attribute) for s in run.steps],
                style,
                marker="o",
                label=f"{label} {fraction}",
            )
    latency_axis.axhline(P99_BUDGET_MS, color="grey", linewidth=0.8)
    latency_axis.set(xlabel="offered orders/s", ylabel="ms", xscale="log", yscale="log")
    latency_axis.set_title("Latency from when the placement was due")
    latency_axis.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
