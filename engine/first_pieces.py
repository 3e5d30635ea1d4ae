"""First pieces first: while some reply is still making its first piece, replies past theirs give way.

On a CPU, llama.cpp decodes the replies in flight as one batch that costs about as much per
token in it as each would alone: one thread, SmolLM2-135M, a reply's token every 16.6 ms alone,
33 ms with a second reply beside it, 50 ms with three (measured here). So a caller whose reply is
just starting waits twice as long for its first words while another call's reply makes its third
sentence, which its TTS will not need for seconds. A reply past its first piece therefore stops
generating when another reply begins, waits until every reply that began has its first piece out
(for `max_wait_s` at most in all), and goes on from its own text (the backend continues an assistant message).

`FirstPieces` is the shared count; `generate` (engine.thinking) asks it at each delta. Nothing here
blocks but `wait`, which a reply's worker thread calls between two requests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class FirstPieces:
    """How many replies are making their first piece, and the wait of the ones that gave way to them."""

    def __init__(self, *, enabled: bool = True, max_wait_s: float = 1.0) -> None:
        """`max_wait_s`: the most a reply waits in all, however often it gives way (then it goes on regardless)."""
        self.enabled = enabled
        self.max_wait_s = max_wait_s
        self._cond = threading.Condition()
        self._making = 0
        self.yields = 0
        self.yielded_ms = 0

    def begin(self) -> None:
        """A reply starts on the model: until `done`, it is making its first piece."""
        with self._cond:
            self._making += 1

    def done(self) -> None:
        """That reply's first piece is out (or it ended without one)."""
        with self._cond:
            self._making -= 1
            if self._making == 0:
                self._cond.notify_all()

    def should_yield(self) -> bool:
        """Asked by a reply past its first piece: another reply is making its first now."""
        return self.enabled and self._making > 0

    def wait(self, stopped: Callable[[], bool], up_to_s: float) -> float:
        """Block until no reply is making its first piece, `up_to_s` has passed, or `stopped()` is true (polled:
        a cancel does not notify). Returns the seconds waited."""
        t0 = time.monotonic()
        deadline = t0 + up_to_s
        with self._cond:
            while self._making and not stopped() and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(min(left, 0.05))
            waited = time.monotonic() - t0
            self.yields += 1
            self.yielded_ms += int(waited * 1000)
        return waited
