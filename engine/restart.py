"""When to restart a crashed process, and when to stop trying. Pure: time is passed in."""

from __future__ import annotations

from collections import deque


class RestartPolicy:
    """Exponential back-off with an intensity cap, per process.

    The first crash in a window restarts after `first_s` (zero by default: a
    crash is repaired at once); the n-th after `base_s * 2**(n-2)`, capped at
    `max_s`. More than `intensity` crashes within `window_s` means the fault is
    not transient, and the policy answers None: give up.
    """

    def __init__(self, *, first_s: float, base_s: float, max_s: float, intensity: int, window_s: float) -> None:
        self.first_s = first_s
        self.base_s = base_s
        self.max_s = max_s
        self.intensity = intensity
        self.window_s = window_s
        self._exits: deque[float] = deque()

    def recent_exits(self, now: float) -> int:
        while self._exits and now - self._exits[0] > self.window_s:
            self._exits.popleft()
        return len(self._exits)

    def on_exit(self, now: float) -> float | None:
        """Record an unexpected exit at `now`; the delay before restarting, or None to give up."""
        self._exits.append(now)
        n = self.recent_exits(now)
        if n > self.intensity:
            return None
        if n == 1:
            return self.first_s
        return min(self.max_s, self.base_s * 2.0 ** (n - 2))
