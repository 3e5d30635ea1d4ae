"""First pieces first: while some reply is still making its first piece, replies past theirs give way.

On a CPU, llama.cpp decodes the replies in flight as one batch that costs about as much per
token in it as each would alone: one thread, SmolLM2-135M, a reply's token every 16.6 ms alone,
33 ms with a second reply beside it, 50 ms with four in flight (measured here). So a caller whose reply is
just starting waits twice as long for its first words while another call's reply makes its third
sentence, which its TTS will not need for seconds. A reply past its first piece therefore stops
generating when another reply begins, waits until every reply that began has its first piece out
(for `max_wait_s` at most in all), and goes on from its own text (the backend continues an assistant message).

`FirstPieces` is the shared count; `Yielder` is one reply's side of it, which `generate` (engine.thinking)
asks at each delta. Nothing here blocks but `wait`, which a reply's worker thread calls between two requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("engine.llm")


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


class Yielder:
    """One reply's side of `FirstPieces` (none for a line said verbatim): making its first piece from the start until
    `after_delta` sees it out; after that, giving way when asked, for its allowance of `max_wait_s` in all."""

    def __init__(self, first_pieces: FirstPieces | None) -> None:
        self.first_pieces = first_pieces
        self.making_first = first_pieces is not None
        self.wait_left_s = first_pieces.max_wait_s if first_pieces is not None else 0.0
        self.gave_way = False
        if first_pieces is not None:
            first_pieces.begin()

    def after_delta(self, first_piece_out: bool) -> bool:
        """After each delta: whether the reply should stop now and give way."""
        if self.first_pieces is None:
            return False
        if self.making_first and first_piece_out:
            self.making_first = False
            self.first_pieces.done()
        self.gave_way = not self.making_first and self.wait_left_s > 0 and self.first_pieces.should_yield()
        return self.gave_way

    def wait(self, stopped: Callable[[], bool]) -> None:
        assert self.first_pieces is not None
        self.wait_left_s -= self.first_pieces.wait(stopped, self.wait_left_s)

    def refused(self, error: Exception) -> None:
        """The model would not continue the reply (some chat templates refuse a trailing assistant message): no
        reply in this process gives way again, and this one ends with what it had."""
        if self.first_pieces is not None and self.first_pieces.enabled:
            self.first_pieces.enabled = False
            log.warning("the model would not go on from a reply's own text (%s): replies no longer give way to "
                        "first pieces", error)

    def close(self) -> None:
        """The reply is over: if its first piece never came, it is no longer making one."""
        if self.first_pieces is not None and self.making_first:
            self.making_first = False
            self.first_pieces.done()
