"""Doorbells: a wake-up word in shared memory that consumers sleep on.

A producer rings the doorbell after publishing; a consumer spins briefly and then
sleeps in the kernel (Linux futex on a shared mapping) until rung or a timeout.
One doorbell serves every ring one consumer process reads, so the speech process
sleeps on a single word for all its calls.

No lost wake-ups (a Dekker-style handshake, every step sequentially consistent):
the consumer increments `waiters`, samples `seq`, re-checks its rings, and sleeps
only while `seq` still holds the sample (the kernel compares atomically). The
producer publishes its index, then reads `waiters`; only when someone waits does
it bump `seq` and wake. If the producer read `waiters == 0`, the consumer's
increment comes later in the total order, so its re-check sees the data; if the
producer saw a waiter, it bumps `seq` and wakes, and a consumer that sampled
`seq` before the bump cannot fall asleep on the stale value.

The common case, a consumer busy or spinning, costs the producer one atomic load.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import time
from collections.abc import Callable

from ipc.atomic import AtomicWord

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine())
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_INT_MAX = 0x7FFFFFFF

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


FUTEX_AVAILABLE = _SYS_FUTEX is not None and platform.system() == "Linux"

DOORBELL_BYTES = 64


def futex_wait(address: int, expected: int, timeout_s: float) -> None:
    """Sleep while the u32 at `address` equals `expected`, at most `timeout_s`."""
    if not FUTEX_AVAILABLE:  # portable fallback: short bounded sleep
        time.sleep(min(timeout_s, 0.001))
        return
    ts = _Timespec(int(timeout_s), int((timeout_s % 1.0) * 1e9))
    rc = _syscall(_SYS_FUTEX, ctypes.c_void_p(address), _FUTEX_WAIT,
                  ctypes.c_uint32(expected), ctypes.byref(ts), None, 0)
    if rc == -1:
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR):
            raise OSError(err, os.strerror(err))


def futex_wake(address: int) -> None:
    if FUTEX_AVAILABLE:
        _syscall(_SYS_FUTEX, ctypes.c_void_p(address), _FUTEX_WAKE, _INT_MAX, None, None, 0)


class Doorbell:
    """A futex word plus a waiter count, in one 64-byte line of shared memory."""

    def __init__(self, buffer: memoryview, offset: int) -> None:
        self._seq = AtomicWord(buffer, offset, 4)
        self._waiters = AtomicWord(buffer, offset + 4, 4)
        self.wakeups = 0  # futex wake syscalls issued by this process (diagnostics)

    def reset_waiters(self) -> None:
        """For the doorbell's one consumer, at attach: a predecessor killed mid-sleep left its count behind."""
        self._waiters.store_seq_cst(0)

    def ring(self) -> None:
        """Called by a producer after a sequentially consistent publish."""
        if self._waiters.load_seq_cst():
            self._seq.fetch_add(1)
            self.wakeups += 1
            futex_wake(self._seq.address)

    def wait(self, ready: Callable[[], bool], timeout_s: float, spin_s: float = 50e-6) -> bool:
        """Return True as soon as `ready()` holds, False after `timeout_s` without it."""
        if ready():
            return True
        now = time.monotonic()
        deadline = now + timeout_s
        spin_until = now + min(spin_s, timeout_s)
        while time.monotonic() < spin_until:
            if ready():
                return True
        while True:
            self._waiters.fetch_add(1)
            try:
                seen = self._seq.load_seq_cst()
                if ready():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                futex_wait(self._seq.address, seen, remaining)
            finally:
                self._waiters.fetch_add(-1)
            if ready():
                return True
            if time.monotonic() >= deadline:
                return False

    def close(self) -> None:
        self._seq.close()
        self._waiters.close()
