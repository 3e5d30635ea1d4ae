"""Which calls are live, as one process learns it from CallStarted / CallEnded messages.

Those messages can arrive late, twice, or in the wrong order: from different
senders (the transport, and the supervisor on the transport's behalf), or
replayed to a restarted process. Ring pairs are reused, so the table is keyed by
slot and every decision compares the lease epoch, which only grows per slot: an
end never removes a newer call, and a start of a call already ended is ignored.
"""

from __future__ import annotations

from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")


class LiveCall(NamedTuple, Generic[T]):
    """A live call as one process knows it: its id, its lease epoch, and that process's state for it."""

    call_id: str
    epoch: int
    state: T


class CallTable(Generic[T]):
    """The live calls of one process, keyed by ring slot; starts and ends decided by lease epoch."""

    def __init__(self) -> None:
        self._live: dict[int, LiveCall[T]] = {}
        self._ended: dict[int, int] = {}  # slot -> highest epoch known to be over

    def start(self, slot: int, epoch: int, call_id: str, state: T) -> tuple[bool, LiveCall[T] | None]:
        """Register a call. Returns (accepted, the older call it displaced, if any)."""
        if epoch <= self._ended.get(slot, 0):
            return False, None
        current = self._live.get(slot)
        if current is not None and current.epoch >= epoch:
            return False, None
        self._live[slot] = LiveCall(call_id, epoch, state)
        return True, current

    def end(self, slot: int, epoch: int) -> LiveCall[T] | None:
        """Mark (slot, epoch) over; returns the call removed, if it was live."""
        self._ended[slot] = max(epoch, self._ended.get(slot, 0))
        current = self._live.get(slot)
        if current is not None and current.epoch <= epoch:
            del self._live[slot]
            return current
        return None

    def get(self, slot: int) -> LiveCall[T] | None:
        return self._live.get(slot)

    def find(self, call_id: str) -> LiveCall[T] | None:
        return next((c for c in self._live.values() if c.call_id == call_id), None)

    def values(self) -> list[LiveCall[T]]:
        return list(self._live.values())

    def __len__(self) -> int:
        return len(self._live)


M = TypeVar("M")


class EarlyMessages(Generic[M]):
    """Messages about calls not started yet, held until they start (the oldest calls' go first past `keep`).

    Only one sender's messages keep their order: a `Cancel` overtakes the `CallStarted` before it, and a sentence
    the LLM makes for a new call may reach the TTS before the transport's `CallStarted` does.
    """

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._held: dict[str, list[M]] = {}

    def hold(self, call_id: str, msg: M) -> None:
        self._held.setdefault(call_id, []).append(msg)
        if len(self._held) > self.keep:
            del self._held[next(iter(self._held))]

    def release(self, call_id: str) -> list[M]:
        """The messages held for `call_id`, in the order they came; none are kept any longer."""
        return self._held.pop(call_id, [])

    def __len__(self) -> int:
        return len(self._held)
