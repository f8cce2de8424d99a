"""The pipeline bench's figures: per-step results, the markdown table and the plot."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.pipeline_cpu import BENCH_READS, POSTGRES_OTHER, Usage, ceiling, per_order_ms
from bench.pipeline_floor import KAFKA, Floor
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
    # Per topic (contract name): events the pipeline published per order placed.
    events_per_order: dict[str, float] = field(default_factory=dict)
    floor: Floor | None = None
    # Cores the pipeline's processes used at rest when the floor was measured.
    settled: float = float("nan")
    accepted: dict[str, int] = field(default_factory=dict)
    profiled: str | None = None
    profile: list[tuple[str, float]] = field(default_factory=list)
    # Per offered rate: the CPU each component used over the step's placing and draining.
    usage: dict[float, Usage] = field(default_factory=dict)
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


def pipeline_ms(usage: Usage, charged: int) -> float:
    """The pipeline's CPU per order charged: every component but the bench's own reads."""
    return per_order_ms(usage.counted() - usage.cpu.get(BENCH_READS, 0.0), charged)


def cpu_line(usage: Usage, charged: int, cores: int) -> str:
    ranked = sorted(usage.cpu.items(), key=lambda item: -item[1])
    return (
        f"    CPU {pipeline_ms(usage, charged):.1f} ms/order: "
        + ", ".join(f"{name} {per_order_ms(used, charged):.1f}" for name, used in ranked if used)
        + f"; machine busy {usage.machine_busy / usage.seconds:.2f} of {cores} cores"
    )


def _times(value: float, base: float | None) -> str:
    return f"{value / base:.1f}x" if base else "n/a"


def _intro(run: Run) -> list[str]:
    return [
        "# The whole pipeline under increasing offered load",
        "",
        f"`make bench-pipeline`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {run.cores} cores shared "
        "by the three services, Kafka, PostgreSQL, the load generator and the simulated partners "
        f"(and anything else running). Open loop, {run.seconds:g} s per step. An order counts "
        "end to end when settlement's ledger holds its charges (read-only from "
        "`journal_entries`: confirmed = the OrderConfirmed event's `booked_at`, charged = the "
        "booking transaction's `recorded_at`). Latencies count from when the placement was due. "
        "p99.9 of a few hundred samples is their maximum. CPU ms/order: every component's CPU "
        "over the step's placing and draining ÷ the orders charged in it; x floor: that ÷ the "
        "floor per order measured below.",
        "",
    ]


def _steps_table(run: Run) -> list[str]:
    floor = run.floor.ms_per_order() if run.floor else None
    out = [
        "| offered/s | placed/s | end to end/s | CPU ms/order | x floor "
        "| placement p50/p99/p99.9 ms | → confirmed ms | → charged ms | charged/offered |",
        "|---:|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for s in run.steps:
        usage = run.usage.get(s.rate)
        ms = pipeline_ms(usage, s.charged) if usage else float("nan")
        out.append(
            f"| {s.rate:.0f} | {s.placed_per_s:,.0f} | {s.end_to_end_per_s:,.0f} "
            f"| {ms:,.1f} | {_times(ms, floor)} "
            f"| {s.placement.cells()} | {s.confirmed.cells()} | {s.charged_after.cells()} "
            f"| {s.charged}/{s.offered} |"
        )
    return out


def _cpu_tables(run: Run) -> list[str]:
    if not run.usage:
        return []
    names = list(next(iter(run.usage.values())).cpu)
    charged = {s.rate: s.charged for s in run.steps}
    out = [
        "",
        "## Where each order's CPU goes",
        "",
        "ms of CPU per order charged, over each step's placing and draining (`/proc/<pid>/stat` "
        "user + system). PostgreSQL backends are grouped by the database they serve; "
        f"'{POSTGRES_OTHER}' is the postmaster and its background processes (WAL writer, "
        f"checkpointer, autovacuum); '{BENCH_READS}' is the bench polling settlement's ledger "
        "(left out of the pipeline's total). 'kafka' is the broker's JVM. 'rest of machine' is "
        "the machine's busy time (`/proc/stat`) that no component explains: the kernel, and "
        "whatever else shares the machine (on a shared broker and database server, 'kafka' and "
        f"'{POSTGRES_OTHER}' also carry others' work).",
        "",
        "| offered/s | charged | " + " | ".join(names) + " | pipeline | rest of machine "
        f"| machine busy (of {run.cores} cores) |",
        "|---:|---:|" + "---:|" * (len(names) + 3),
    ]
    for rate, usage in run.usage.items():
        orders = charged.get(rate, 0)
        cells = [f"{per_order_ms(usage.cpu.get(n, 0.0), orders):.2f}" for n in names]
        rest = per_order_ms(usage.machine_busy - usage.counted(), orders)
        out.append(
            f"| {rate:.0f} | {orders} | "
            + " | ".join(cells)
            + f" | **{pipeline_ms(usage, orders):.1f}** | {rest:.1f} "
            f"| {usage.machine_busy / usage.seconds:.2f} |"
        )
    out += [
        "",
        "The same, as cores (CPU seconds per second over the step; 1.00 = one core):",
        "",
        "| offered/s | seconds | " + " | ".join(names) + " | machine busy |",
        "|---:|---:|" + "---:|" * (len(names) + 1),
    ]
    out += [
        f"| {rate:.0f} | {usage.seconds:.0f} | "
        + " | ".join(f"{usage.cpu.get(n, 0.0) / usage.seconds:.2f}" for n in names)
        + f" | {usage.machine_busy / usage.seconds:.2f} |"
        for rate, usage in run.usage.items()
    ]
    return out


def _peak(run: Run) -> StepResult | None:
    return max(run.steps, key=lambda s: s.end_to_end_per_s, default=None)


def _floor_section(run: Run) -> list[str]:
    if run.floor is None:
        return []
    floor = run.floor.ms_per_order()
    out = [
        "",
        "## The floor per order",
        "",
        "What an order's raw work costs this machine with no application logic, done the "
        "cheapest way: one statement per transaction, committed by itself, ledger rows by "
        "batched COPY; as many rows, events and bytes per order as the pipeline wrote in this "
        "run. Measured in the same run, closed loop with enough concurrency to use the CPU "
        "(`bench/pipeline_floor.py`). Every process doing the work is counted, client and "
        f"server alike. The services, left running, used {run.settled:.2f} cores with their "
        "databases when it started (idle polling, or a backlog the last step left).",
        "",
        "| part | what | ms/order | by process (ms/order) | orders/s closed loop | machine busy |",
        "|---|---|---:|---|---:|---:|",
    ]
    for part in run.floor.parts:
        by_process = ", ".join(
            f"{name} {per_order_ms(used, part.orders):.2f}" for name, used in part.usage.cpu.items()
        )
        out.append(
            f"| {part.name} | {part.what} | {part.ms_per_order():.2f} | {by_process} "
            f"| {part.orders / part.usage.seconds:,.0f} "
            f"| {part.usage.machine_busy / part.usage.seconds:.2f} cores |"
        )
    out.append(f"| **floor** | the parts together | **{floor:.2f}** | | | |")
    budget = run.cores * 1000 / TARGET_ORDERS
    out += [
        "",
        f"- Ceiling of the raw parts alone: {run.cores} cores ÷ {floor:.2f} ms = "
        f"**{ceiling(run.cores, floor):,.0f} orders/s** "
        f"({_times(ceiling(run.cores, floor), TARGET_ORDERS)} the target of "
        f"{TARGET_ORDERS:.0f}/s, which allows {budget:.1f} ms of CPU per order for everything).",
    ]
    peak = _peak(run)
    usage = run.usage.get(peak.rate) if peak else None
    if peak is not None and usage is not None and peak.charged:
        ms = pipeline_ms(usage, peak.charged)
        out.append(
            f"- The pipeline at its peak step ({peak.rate:.0f}/s offered, "
            f"{peak.end_to_end_per_s:,.0f}/s end to end): {ms:.1f} ms of CPU per order = "
            f"**{_times(ms, floor)} the floor** (the application's overhead factor); at that cost "
            f"{run.cores} cores do at most {ceiling(run.cores, ms):,.0f} orders/s, and it reached "
            f"{peak.end_to_end_per_s / ceiling(run.cores, floor):.0%} of the raw parts' ceiling."
        )
        out += _by_tier(run.floor, usage, peak)
    return out


def tier(component: str) -> str:
    """The kind of process a component is: the Python ones, PostgreSQL's, or the broker."""
    if component == KAFKA:
        return "Kafka broker"
    return "PostgreSQL" if component.startswith("postgres") else "Python processes"


def _by_tier(floor: Floor, usage: Usage, peak: StepResult) -> list[str]:
    pipeline: dict[str, float] = {}
    for name, used in usage.cpu.items():
        if name != BENCH_READS:
            pipeline[tier(name)] = pipeline.get(tier(name), 0.0) + used / peak.charged * 1000
    raw: dict[str, float] = {}
    for part in floor.parts:
        for name, used in part.usage.cpu.items():
            raw[tier(name)] = raw.get(tier(name), 0.0) + per_order_ms(used, part.orders)
    out = [
        "",
        "By kind of process, the peak step against the floor (ms of CPU per order; Python: "
        "the services and the load generator, against the floor's clients and bare server):",
        "",
        "| | pipeline | floor | x floor |",
        "|---|---:|---:|---:|",
    ]
    for kind in ("Python processes", "PostgreSQL", "Kafka broker"):
        mine, bare = pipeline.get(kind, 0.0), raw.get(kind, 0.0)
        out.append(f"| {kind} | {mine:.1f} | {bare:.1f} | {_times(mine, bare)} |")
    return out


def _targets(run: Run) -> list[str]:
    out = ["", "## Against the targets", ""]
    per_order = sum(run.events_per_order.values()) or 1.0
    if run.kafka is not None:
        out.append(
            f"- aiokafka, {run.kafka.events:,} of the pipeline's events "
            f"({per_order:.1f} per order: "
            + ", ".join(f"{n} {r:.1f}" for n, r in run.events_per_order.items())
            + ") produced again with the services' producer settings, a relay batch at a "
            f"time: {run.kafka.produce_per_s:,.0f} events/s "
            f"({run.kafka.produce_per_s / per_order:,.0f} orders/s); read with getmany: "
            f"{run.kafka.consume_per_s:,.0f} events/s (the floor's Kafka part). aiokafka keeps "
            "one produce request in flight per broker, carrying at most `max_batch_size` (16 KB) "
            "per partition, so the produce rate is bound by the broker's round trip, which on a "
            "saturated, shared machine swings several-fold from run to run; the CPU per event "
            "(the floor) is the figure that compares."
        )
    best = max((s for s in run.steps if s.sustained()), key=lambda s: s.rate, default=None)
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
    return out


def _database_section(run: Run) -> list[str]:
    if not run.database:
        return []
    out = [
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
    return out


def _profile_section(run: Run) -> list[str]:
    if not run.profile:
        return []
    out = [
        "",
        f"## Where {run.profiled}'s time goes",
        "",
        "py-spy (50 Hz, on-CPU samples) on the service from the first profiled step on; "
        "share of samples by the innermost project frame → the innermost frame:",
        "",
        "| share | frame |",
        "|---:|---|",
    ]
    return out + [f"| {share:.1%} | `{name}` |" for name, share in run.profile]


def markdown(run: Run) -> str:
    out = [
        *_intro(run),
        *_steps_table(run),
        *_cpu_tables(run),
        *_floor_section(run),
        *_targets(run),
        *_database_section(run),
        *_profile_section(run),
    ]
    return "\n".join(out) + "\n"


def plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [s.rate for s in run.steps]
    figure, (rate_axis, latency_axis, cpu_axis) = plt.subplots(1, 3, figsize=(18, 4.8))
    rate_axis.plot(rates, rates, "k:", label="offered")
    rate_axis.plot(rates, [s.placed_per_s for s in run.steps], "o-", label="placed (201)")
    rate_axis.plot(
        rates, [s.end_to_end_per_s for s in run.steps], "o-", label="charged (end to end)"
    )
    rate_axis.axhline(TARGET_ORDERS, color="green", linewidth=0.8, label="target")
    if run.floor is not None:
        rate_axis.axhline(
            ceiling(run.cores, run.floor.ms_per_order()), color="grey", linestyle="--",
            linewidth=0.8, label=f"raw parts' ceiling on {run.cores} cores",
        )  # fmt: skip
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
    _plot_cpu(run, cpu_axis)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_cpu(run: Run, axis: Any) -> None:
    """Stacked bars: each step's CPU per order by component, and the floor's by part."""
    charged = {s.rate: s.charged for s in run.steps}
    steps = [(rate, usage) for rate, usage in run.usage.items() if charged.get(rate)]
    labels = [f"{rate:.0f}/s" for rate, _ in steps]
    names = list(steps[0][1].cpu) if steps else []
    bottoms = [0.0] * len(steps)
    for name in names:
        heights = [per_order_ms(u.cpu.get(name, 0.0), charged[r]) for r, u in steps]
        axis.bar(labels, heights, bottom=bottoms, label=name)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    if run.floor is not None:
        bottom = 0.0
        shades = ("0.9", "0.75", "0.6", "0.45", "0.3")
        for part, shade in zip(run.floor.parts, shades, strict=False):
            axis.bar(["floor"], [part.ms_per_order()], bottom=bottom, color=shade, hatch="//",
                     label=f"floor: {part.name}")  # fmt: skip
            bottom += part.ms_per_order()
    axis.axhline(run.cores * 1000 / TARGET_ORDERS, color="green", linewidth=0.8,
                 label=f"budget for {TARGET_ORDERS:.0f}/s")  # fmt: skip
    axis.set(xlabel="offered orders/s (step)", ylabel="ms of CPU per order charged")
    axis.set_title("Where each order's CPU goes")
    axis.legend(fontsize=6, ncol=2)
