"""How many calls the host takes, learned from what it measures, not only set by `max_calls`.

Every call on a box shares its models. Past the point where they keep up, one more
call makes every call slower: replies come seconds late for everyone. So the
transport keeps a call limit, as a concurrency limiter does, and a caller beyond it
hears the busy line:

- **Replies slow: the limit falls.** Once `MIN_REPLIES` replies have been measured
  since the limit last changed, and their p90 response time (the caller stopped
  speaking -> the reply's first audio went out) is above
  `engine.admit_max_response_ms`, the limit becomes one below the calls that were
  up when the latest of them sounded.
- **CPU pegged: no more calls for now.** Once the host's CPU over the last
  `CPU_WINDOW_S` is busier than `engine.admit_max_cpu_pct`, no call is let in
  while one is up, until it falls under `RESUME` of that (the learned limit stays).
- **Replies fast: the limit rises** by one once `MIN_REPLIES` replies since the
  last change have a p90 under `RESUME` of the limit, up to `max_calls`.

Each change starts a new measurement, so replies made at the old load never judge
the new one. The limit never falls below one: a call is always let in when none
is up. Pure but for `HostCpu`, which reads /proc/stat.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_REPLIES = 5  # fewer replies at one load say nothing about it
RECENT = 20  # the replies that judge the load: the latest ones at this limit
CPU_WINDOW_S = 10.0
RESUME = 0.8


@dataclass(frozen=True)
class Verdict:
    """Admit or not, and why, in words an operator reads in /health and the log."""

    admit: bool
    why: str


class Admission:
    """The transport's call limit: `reply` and `cpu` samples in, a `verdict` for the next caller out."""

    def __init__(self, max_calls: int, max_response_ms: int, max_cpu_pct: int) -> None:
        self.max_calls, self.max_response_ms, self.max_cpu_pct = max_calls, max_response_ms, max_cpu_pct
        self.limit = max_calls
        self.why = "no load measured yet"
        # (response ms, calls up when it sounded): the latest replies since the limit last changed
        self._replies: deque[tuple[float, int]] = deque(maxlen=RECENT)
        self._cpu: deque[tuple[float, float]] = deque()  # (when, busy % of the host since the previous sample)
        self.cpu_pegged = False
        self.turned_away = 0
        self.replies_total = 0

    def reply(self, response_ms: float, calls_up: int) -> None:
        """A reply answered the caller `response_ms` after they stopped speaking, with `calls_up` calls up."""
        self.replies_total += 1
        self._replies.append((response_ms, calls_up))
        if len(self._replies) < MIN_REPLIES or not self.max_response_ms:
            return
        p90 = _p90([ms for ms, _ in self._replies])
        if p90 > self.max_response_ms:
            self._change(max(1, self._replies[-1][1] - 1),
                         f"replies' p90 response time {p90:.0f} ms > {self.max_response_ms} with {calls_up} calls up")
        elif p90 < RESUME * self.max_response_ms and self.limit < self.max_calls:
            self._change(self.limit + 1, f"replies' p90 response time {p90:.0f} ms with {calls_up} calls up")

    def cpu(self, busy_pct: float, now: float) -> None:
        """The host was `busy_pct` busy since the previous sample."""
        self._cpu.append((now, busy_pct))
        while self._cpu[0][0] < now - CPU_WINDOW_S:
            self._cpu.popleft()
        mean = self.host_cpu_pct()
        if self.max_cpu_pct and mean is not None:
            self.cpu_pegged = mean > (RESUME if self.cpu_pegged else 1.0) * self.max_cpu_pct

    def host_cpu_pct(self) -> float | None:
        return sum(pct for _, pct in self._cpu) / len(self._cpu) if self._cpu else None

    def verdict(self, calls_up: int) -> Verdict:
        if calls_up >= self.limit:
            return Verdict(False, f"{calls_up} calls up, limit {self.limit}: {self.why}")
        if self.cpu_pegged and calls_up:
            return Verdict(False, f"{calls_up} calls up, host CPU {self.host_cpu_pct():.1f}% > {self.max_cpu_pct}%")
        return Verdict(True, f"{calls_up} calls up, limit {self.limit}")

    def _change(self, limit: int, why: str) -> None:
        self.limit, self.why = limit, why
        self._replies.clear()  # the new load is judged by its own replies

    def health(self, calls_up: int) -> dict[str, Any]:
        v = self.verdict(calls_up)
        cpu = self.host_cpu_pct()
        return {"admitting": v.admit, "why": v.why, "limit": self.limit, "max_calls": self.max_calls,
                "why_limit": self.why, "cpu_pegged": self.cpu_pegged,
                "turned_away": self.turned_away, "replies_total": self.replies_total,
                "replies_at_this_limit": len(self._replies),
                "host_cpu_pct": None if cpu is None else round(cpu, 1),
                "max_response_ms": self.max_response_ms, "max_cpu_pct": self.max_cpu_pct}


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


class HostCpu:
    """The host's CPU busy share between samples, from /proc/stat (None where there is none)."""

    def __init__(self, stat: Path = Path("/proc/stat")) -> None:
        self.stat = stat
        self._last = self._read()

    def _read(self) -> tuple[int, int] | None:
        try:
            fields = self.stat.read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        ticks = [int(x) for x in fields[:8]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        return sum(ticks), idle

    def sample(self) -> float | None:
        """% of the whole host (all cores) busy since the previous sample."""
        now, last = self._read(), self._last
        self._last = now
        if now is None or last is None or now[0] <= last[0]:
            return None
        return 100.0 * (1 - (now[1] - last[1]) / (now[0] - last[0]))


@dataclass(frozen=True)
class Party:
    """Who is on the other end of a call, as the voice webhook learned it: their number, and who called whom."""

    number: str = ""
    """The caller's number on an inbound call, the number called on an outbound one (E.164; empty: unknown)."""
    outbound: bool = False


class Reservations:
    """Lines promised to callers the voice webhook let in, until their stream starts or `hold_s` passes.

    Twilio connects the stream a moment after the webhook answers; counting those calls as up from the answer
    on means a burst of callers cannot all be told yes and then find no line when their streams arrive. Each
    promise keeps who the call is with (`Party`), which the stream's own messages never say.
    """

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self._held: dict[str, tuple[float, Party]] = {}  # call sid -> when the promise lapses (monotonic s), party

    def held(self, now: float, besides: str = "") -> int:
        """Promises still open at `now`, not counting `besides` (a call asking again is not a second call)."""
        self._held = {sid: kept for sid, kept in self._held.items() if kept[0] > now}
        return len(self._held) - (besides in self._held)

    def reserve(self, call_sid: str, now: float, party: Party | None = None) -> None:
        self._held[call_sid] = (now + self.hold_s, party or Party())

    def claim(self, call_sid: str) -> Party | None:
        """The call's stream started: its promise is kept (it now holds a ring pair). Who it is with; None if it
        had no promise."""
        kept = self._held.pop(call_sid, None)
        return None if kept is None else kept[1]
