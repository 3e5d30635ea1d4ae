"""Prometheus metrics for operators: what the transport sees of every call, in the text format scrapers read.

The transport observes as calls happen (`CallMetrics.call_ended`, `.reply_sounded`,
`.barge_in`, `.stage`, `.turn`) and, at each scrape, reads what it already keeps
(`Snapshot`: calls up, the supervisor's last status, ring counters, its own counters,
admission). Names follow Prometheus conventions (`engine_` prefix, `_seconds`,
`_total`); latency buckets are laid out for hundreds of milliseconds. Outcomes are
grouped into a few classes, so a label never grows with free text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ipc.schema import Status

LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
STAGES = ("end_of_turn", "transcript", "reply_requested", "first_audio_out")
"""The stages of a turn the transport stamps, each timed from when the caller stopped speaking."""
OUTCOMES = (
    ("caller hung up", "caller_hung_up"), ("engine hung up", "engine_hung_up"), ("stream silent", "silent"),
    ("caller not reading", "caller_not_reading"), ("rejected", "rejected"), ("protocol error", "rejected"),
    ("refused", "refused"), ("no start", "no_start"), ("socket closed", "dropped"),
)


def outcome_class(outcome: str) -> str:
    """A call's outcome (free text) as one of a few label values."""
    return next((label for prefix, label in OUTCOMES if outcome.startswith(prefix) or prefix in outcome), "other")


@dataclass
class Snapshot:
    """What the transport already keeps, read at scrape time."""

    calls_active: int
    status: Status | None
    counters: dict[str, int]
    ring_drops: dict[str, int]
    admission_limit: int
    turned_away: int


@dataclass
class CallMetrics:
    """The engine's metrics in one registry; `render()` is a scrape."""

    snapshot: Callable[[], Snapshot]
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self._calls = Counter("engine_calls", "Calls ended, by outcome.", ["outcome"], registry=r)
        self._turns = Counter("engine_turns", "Caller turns answered (a reply asked for the caller's words).",
                              registry=r)
        self._response = Histogram("engine_voice_to_voice_seconds", "From the caller's speech end to the reply's "
                                   "first audio sent, per answered turn.", buckets=LATENCY_BUCKETS, registry=r)
        self._barge_in = Histogram("engine_barge_in_seconds", "From the caller's speech onset to the `clear` sent, "
                                   "per barge-in.", buckets=LATENCY_BUCKETS, registry=r)
        self._stage = Histogram("engine_turn_stage_seconds", "When each stage of a turn was reached, from the "
                                "caller's speech end.", ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        r.register(_ScrapeTime(self.snapshot))

    def call_ended(self, outcome: str) -> None:
        self._calls.labels(outcome_class(outcome)).inc()

    def turn(self) -> None:
        self._turns.inc()

    def reply_sounded(self, seconds: float) -> None:
        self._response.observe(seconds)

    def barge_in(self, seconds: float) -> None:
        self._barge_in.observe(seconds)

    def stage(self, stage: str, seconds: float) -> None:
        if stage in STAGES and seconds >= 0:
            self._stage.labels(stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ScrapeTime(Collector):
    """Gauges and counters the transport keeps anyway, read when scraped."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        yield GaugeMetricFamily("engine_calls_active", "Calls streaming now.", value=s.calls_active)
        yield GaugeMetricFamily("engine_admission_limit_calls", "Calls admission lets in at once, as learned.",
                                value=s.admission_limit)
        yield CounterMetricFamily("engine_calls_turned_away", "Callers answered busy by admission.",
                                  value=s.turned_away)
        restarts = CounterMetricFamily("engine_process_restarts", "Restarts of each engine process.",
                                       labels=["process"])
        up = GaugeMetricFamily("engine_process_ready", "1 when the process is ready.", labels=["process"])
        queued = GaugeMetricFamily("engine_model_queue_depth", "Work waiting in a model process (its last "
                                   "heartbeat).", labels=["process"])
        for proc in s.status.procs if s.status is not None else []:
            restarts.add_metric([proc.name], proc.restarts)
            up.add_metric([proc.name], 1.0 if proc.state == "ready" else 0.0)
            if "queued" in proc.stats:
                queued.add_metric([proc.name], proc.stats["queued"])
        yield from (restarts, up, queued)
        drops = CounterMetricFamily("engine_ring_drops", "Frames a full ring refused, by direction.",
                                    labels=["direction"])
        for direction, n in s.ring_drops.items():
            drops.add_metric([direction], n)
        yield drops
        events = CounterMetricFamily("engine_transport_events", "The transport's event counters (connections "
                                     "shed, streams rejected, webhooks refused...).", labels=["event"])
        for name, n in sorted(s.counters.items()):
            events.add_metric([name], n)
        yield events
