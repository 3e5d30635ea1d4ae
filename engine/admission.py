"""Whether the host can take another call, decided from what it measures, not only from `max_calls`.

Every call on a box shares its models. Past the point where they keep up, one more
call makes every call slower: replies come seconds late for everyone. So a new
caller is turned away with the busy line while the box is saturated, which is
judged two ways:

- **Replies:** the p90 of the response times (the caller stopped speaking -> the
  reply's first audio went out) of the replies of the last `WINDOW_S` is above
  `engine.admit_max_response_ms`.
- **CPU:** the host's CPU was busier than `engine.admit_max_cpu_pct` over the last
  `CPU_WINDOW_S`.

Once saturated, it admits again only below `RESUME` of the limit (no flapping at
the edge). With no call up it always admits: nothing of ours is there to protect.
Pure but for `HostCpu`, which reads /proc/stat.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WINDOW_S = 60.0
MIN_REPLIES = 3  # fewer replies in the window say nothing about saturation
CPU_WINDOW_S = 10.0
RESUME = 0.8


@dataclass(frozen=True)
class Verdict:
    """Admit or not, and why, in words an operator reads in /health and the log."""

    admit: bool
    why: str


class Admission:
    """The transport's measure of load: `reply` and `cpu` samples in, a `verdict` for the next caller out."""

    def __init__(self, max_response_ms: int, max_cpu_pct: int) -> None:
        self.max_response_ms, self.max_cpu_pct = max_response_ms, max_cpu_pct
        self._replies: deque[tuple[float, float]] = deque()  # (when, response ms)
        self._cpu: deque[tuple[float, float]] = deque()  # (when, busy % of the host since the previous sample)
        self.saturated = False
        self.turned_away = 0
        self.replies_total = 0

    def reply(self, response_ms: float, now: float) -> None:
        self._replies.append((now, response_ms))
        self.replies_total += 1

    def cpu(self, busy_pct: float, now: float) -> None:
        self._cpu.append((now, busy_pct))

    def figures(self, now: float) -> dict[str, Any]:
        """The measured load: replies' p90 response time and the host's CPU, over their windows."""
        while self._replies and self._replies[0][0] < now - WINDOW_S:
            self._replies.popleft()
        while self._cpu and self._cpu[0][0] < now - CPU_WINDOW_S:
            self._cpu.popleft()
        times = sorted(ms for _, ms in self._replies)
        p90 = times[min(len(times) - 1, math.ceil(0.9 * len(times)) - 1)] if len(times) >= MIN_REPLIES else None
        cpu = sum(pct for _, pct in self._cpu) / len(self._cpu) if self._cpu else None
        return {"replies": len(times), "response_p90_ms": None if p90 is None else round(p90),
                "host_cpu_pct": None if cpu is None else round(cpu, 1)}

    def verdict(self, calls_active: int, now: float) -> Verdict:
        f = self.figures(now)
        scale = RESUME if self.saturated else 1.0
        over = []
        if self.max_response_ms and f["response_p90_ms"] is not None \
                and f["response_p90_ms"] > scale * self.max_response_ms:
            over.append(f"replies' p90 response time {f['response_p90_ms']} ms > {scale * self.max_response_ms:.0f}")
        if self.max_cpu_pct and f["host_cpu_pct"] is not None and f["host_cpu_pct"] > scale * self.max_cpu_pct:
            over.append(f"host CPU {f['host_cpu_pct']}% > {scale * self.max_cpu_pct:.0f}%")
        self.saturated = bool(over) and calls_active > 0
        if self.saturated:
            return Verdict(False, "saturated: " + "; ".join(over))
        return Verdict(True, "no call up" if over else "ok")

    def health(self, calls_active: int, now: float) -> dict[str, Any]:
        v = self.verdict(calls_active, now)
        return {"admitting": v.admit, "why": v.why, "turned_away": self.turned_away,
                "replies_total": self.replies_total, **self.figures(now),
                "max_response_ms": self.max_response_ms, "max_cpu_pct": self.max_cpu_pct}


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
