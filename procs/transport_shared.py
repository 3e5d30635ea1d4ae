"""What every call in the transport shares: the bus, the rings, recording and tracing, the counters, admission.

The transport process makes one `TransportShared`; its webhooks and each `procs.phone_call.PhoneCall` hold it.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from engine.admission import Admission, Reservations
from engine.config import Config
from engine.metrics import CallMetrics, Snapshot
from engine.recorder import Recorder
from engine.screening import PendingAnswers
from engine.stats import Recent
from engine.trace import TraceSink
from ipc.bus import AsyncBus
from ipc.pool import RingPool
from procs.after_call import AfterCall
from procs.doorbell import OutboundDoorbell

if TYPE_CHECKING:
    from procs.phone_call import PhoneCall

ENDED_KEPT = 200


@dataclass
class TransportShared:
    """What every call in the transport shares: the bus, the rings, recording and tracing, and the counters."""

    cfg: Config
    bus: AsyncBus
    pool: RingPool
    doorbell: OutboundDoorbell
    recorder: Recorder | None
    trace: TraceSink | None
    calls: dict[str, PhoneCall] = field(default_factory=dict)
    """The calls streaming now, by call id: each adds itself when it runs and leaves when it ends."""
    counters: Counter[str] = field(default_factory=Counter)
    # Per-frame cost on the event loop, in µs: a Twilio media message in (parse, decode, resample, ring write),
    # and a 20 ms frame out (pull, convert, send).
    inbound_us: Recent = field(default_factory=Recent)
    outbound_us: Recent = field(default_factory=Recent)
    ended: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=ENDED_KEPT))
    admission: Admission = field(default_factory=lambda: Admission(1024, 0, 0))
    """The measured load that decides whether a new caller is let in (engine.admission)."""
    reservations: Reservations = field(default_factory=lambda: Reservations(60.0))
    """Lines promised to callers whose streams have not started yet."""
    answers: PendingAnswers = field(default_factory=PendingAnswers)
    """Who answered calls we placed (answering-machine detection), kept for each until its conversation begins."""
    metrics: CallMetrics = field(default_factory=lambda: CallMetrics(lambda: Snapshot(0, None, {}, {}, 0, 0)))
    """What /metrics reports: the transport process gives it the snapshot of what it keeps."""
    twilio_http: Any = None
    """The HTTP client of Twilio's REST requests (engine.handoff.twilio_http)."""
    after: AfterCall | None = None
    """What outlives each call: its transcript, the call-end webhook, the caller's memory (procs.after_call)."""

    def no_line(self, now: float, besides: str = "") -> tuple[str, str] | None:
        """Why a new call gets no line now, as (what, words for the log), or None when it may have one: every
        line is taken or promised ("capacity"), or the measured load says no more ("load", engine.admission).
        `besides`: a call asking again, whose own promise is not counted against it."""
        active = len(self.pool.leases()) + self.reservations.held(now, besides=besides)
        if active >= self.pool.max_calls:
            return "capacity", f"all {self.pool.max_calls} lines busy"
        verdict = self.admission.verdict(active)
        return None if verdict.admit else ("load", verdict.why)


def recordings_of(cfg: Config) -> Recorder | None:
    """The recorder `transport.recordings_dir` asks for, if any."""
    return Recorder(Path(cfg.transport.recordings_dir)) if cfg.transport.recordings_dir else None


def bearer_is(request: web.Request, secret: str) -> bool:
    """Whether the request says `Authorization: Bearer <secret>` (never, for an empty secret)."""
    return bool(secret) and hmac.compare_digest(request.headers.get("Authorization", "").encode(),
                                                f"Bearer {secret}".encode())


def loopback(host: str | None) -> bool:
    """Whether a client address is this host's own (an IPv4 address mapped into IPv6 too)."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
