"""Prometheus metrics every service exposes on ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
OUTBOX_PUBLISHED = Counter("outbox_events_published_total", "Outbox events acknowledged by Kafka")
OUTBOX_UNSENT = Gauge("outbox_unsent_events", "Outbox rows not yet acknowledged by Kafka")
OUTBOX_OLDEST_UNSENT_AGE = Gauge(
    "outbox_oldest_unsent_age_seconds", "How long the oldest unsent outbox row has waited"
)
EVENTS_CONSUMED = Counter(
    "events_consumed_total", "Events handled by a consumer", ["consumer", "outcome"]
)
EVENTS_DEAD_LETTERED = Counter(
    "events_dead_lettered_total", "Messages sent to a dead-letter topic", ["consumer", "topic"]
)
EVENTS_PARKED = Gauge(
    "events_parked",
    "Events a strictly sequenced consumer holds back until the gap before them fills",
    ["consumer"],
)
TIMERS_FIRED = Counter("timers_fired_total", "Timers whose handler ran and committed", ["kind"])
TIMERS_FAILED = Counter(
    "timers_failed_total", "Timer handler attempts that raised (retried later)", ["kind"]
)
TIMERS_PARKED = Counter(
    "timers_parked_total", "Timers left for an operator after their last attempt", ["kind"]
)
TIMERS_UNHANDLED = Gauge(
    "timers_due_unhandled",
    "Due timers of a kind no handler of this service's timer loop is registered for",
    ["kind"],
)
