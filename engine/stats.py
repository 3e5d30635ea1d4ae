"""Recent-sample percentiles for /health: what a frame costs now, not since start-up."""

from __future__ import annotations

from collections import deque

import numpy as np


class Recent:
    """The last `size` samples of a quantity (e.g. microseconds per frame)."""

    def __init__(self, size: int = 5000) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self.total = 0

    def add(self, value: float) -> None:
        self._samples.append(value)
        self.total += 1

    def summary(self) -> dict[str, float]:
        if not self._samples:
            return {"n": 0}
        p50, p99, p999 = np.percentile(np.fromiter(self._samples, float), [50, 99, 99.9])
        return {"n": self.total, "p50": round(float(p50), 1), "p99": round(float(p99), 1),
                "p99_9": round(float(p999), 1), "max": round(max(self._samples), 1)}
