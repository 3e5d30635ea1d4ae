"""The transport's outbound doorbell watcher: bot audio leaves the moment the TTS publishes it.

Each call's send loop paces the audio it has; when it has none it waits on its
`AudioWaiter`. One thread sleeps on the pool's outbound doorbell (a futex the TTS
rings after each write) for every waiting call at once, and wakes the send loop of
each call whose ring got audio. While no call waits it stays off the doorbell, so
the TTS's writes cost no futex wake-ups.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading

from ipc.futex import Doorbell
from ipc.ring import Ring


def _waiting_or_audio(someone_waiting: threading.Event, rings: list[Ring]) -> bool:
    return someone_waiting.is_set() or any(ring.available() for ring in rings)


class AudioWaiter:
    """One call's wait for bot audio. Its ring view belongs to the doorbell thread (a ring's atomic words are per
    thread); `waiting` is read by that thread."""

    def __init__(self, doorbell: OutboundDoorbell, ring: Ring) -> None:
        self._doorbell = doorbell
        self.ring = Ring(ring.buf, ring.base, ring.doorbell)
        self.kick = asyncio.Event()
        self.waiting = False

    async def wait(self, has_audio: Ring, timeout_s: float) -> None:
        """Return when `has_audio` (the send loop's own view of the ring) has a frame, or after `timeout_s`."""
        self.kick.clear()
        self.waiting = True
        self._doorbell.someone_waiting.set()
        try:
            if has_audio.available():
                await asyncio.sleep(0)  # never spin the loop without yielding
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.kick.wait(), timeout_s)
        finally:
            self.waiting = False

    def close(self) -> None:
        """The call is over; its ring view is closed by the doorbell thread, which may be reading it now."""
        self._doorbell.forget(self)


class OutboundDoorbell:
    """The watcher thread and the waiters it serves; `start` once the event loop runs, `stop` on the way out."""

    def __init__(self, bell: Doorbell, spin_s: float) -> None:
        self.bell = bell
        self.spin_s = spin_s
        self.someone_waiting = threading.Event()  # set when a send loop goes idle
        self._waiters: set[AudioWaiter] = set()
        self._retired: list[AudioWaiter] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._watch, name="outbound-doorbell", daemon=True)

    def waiter(self, ring: Ring) -> AudioWaiter:
        waiter = AudioWaiter(self, ring)
        with self._lock:
            self._waiters.add(waiter)
        return waiter

    def forget(self, waiter: AudioWaiter) -> None:
        with self._lock:
            self._waiters.discard(waiter)
            self._retired.append(waiter)
        if not self._thread.is_alive():
            self._close_retired()

    def _close_retired(self) -> None:
        with self._lock:
            retired, self._retired = self._retired, []
        for waiter in retired:
            waiter.ring.close()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.bell.reset_waiters()  # its only sleeper is this thread
        self._loop = loop
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self._close_retired()

    def _watch(self) -> None:
        assert self._loop is not None
        while not self._stop.is_set():
            self._close_retired()  # here, between snapshots: no view of a closed ring is in use
            self.someone_waiting.clear()  # before the snapshot: a sender going idle after it sets it again
            with self._lock:
                idle = [w for w in self._waiters if w.waiting]
            if not idle:
                # Nobody idle: stay off the doorbell, or every TTS write would pay a futex wake for nothing.
                self.someone_waiting.wait(0.05)
                continue
            ready = [w for w in idle if w.ring.available()]
            if not ready:
                # Also wake when another call's sender goes idle: its ring is not in this snapshot.
                views = [w.ring for w in idle]
                self.bell.wait(functools.partial(_waiting_or_audio, self.someone_waiting, views), 0.05, self.spin_s)
                continue
            for waiter in ready:
                waiter.waiting = False
                self._loop.call_soon_threadsafe(waiter.kick.set)
