"""Atomic integer words inside a shared buffer.

The `atomics` package provides real lock-free atomic operations (via its bundled
libpatomic), but its public per-call API costs ~5 us in Python bookkeeping. The
ring's hot path needs a handful of atomic operations per 20 ms frame, so this
module calls the very same libpatomic function pointers directly (~0.4 us each).
The package version is pinned in pyproject.toml because this relies on its
internal layout; `tests/test_atomic.py` checks the fast path against the public API.
"""

from __future__ import annotations

import ctypes
from typing import Any

import atomics
from atomics._impl.enums import OpType

_RELAXED = 0
_ACQUIRE = 2
_RELEASE = 3
_SEQ_CST = 5


class AtomicWord:
    """An unsigned atomic integer of 4 or 8 bytes at an aligned offset of a buffer.

    The memory operations are atomic across processes and threads, but one
    AtomicWord *object* is not thread-safe (it reuses scratch buffers): a thread
    that needs a word another thread also uses makes its own AtomicWord (or Ring)
    over the same memory. Call `close()` before the underlying buffer (mmap) is
    closed: the word holds an exported view of it.
    """

    __slots__ = (
        "_addr",
        "_arg",
        "_argp",
        "_cas",
        "_ctx",
        "_exp",
        "_expp",
        "_fadd",
        "_ld",
        "_res",
        "_resp",
        "_st",
        "_view",
        "width",
    )

    def __init__(self, buffer: memoryview, offset: int, width: int = 8) -> None:
        if width not in (4, 8):
            raise ValueError("width must be 4 or 8")
        if offset % width:
            raise ValueError(f"offset {offset} is not {width}-byte aligned")
        self.width = width
        self._ctx: Any = atomics.atomicview(buffer=buffer[offset:offset + width], atype=atomics.UINT)
        self._view: Any = self._ctx.__enter__()
        core = self._view._core
        self._addr = core.address
        self._ld = core.get_op_func(OpType.LOAD)
        self._st = core.get_op_func(OpType.STORE)
        self._fadd = core.get_op_func(OpType.FETCH_ADD)
        self._cas = core.get_op_func(OpType.CMPXCHG_STRONG)
        ctype = ctypes.c_uint64 if width == 8 else ctypes.c_uint32
        self._res = ctype(0)
        self._resp = ctypes.addressof(self._res)
        self._arg = ctype(0)
        self._argp = ctypes.addressof(self._arg)
        self._exp = ctype(0)
        self._expp = ctypes.addressof(self._exp)

    @property
    def address(self) -> int:
        """The word's virtual address in this process (for futex calls)."""
        return int(self._addr)

    def load(self) -> int:
        """Acquire load."""
        self._ld(self._addr, _ACQUIRE, self._resp)
        return int(self._res.value)

    def load_relaxed(self) -> int:
        self._ld(self._addr, _RELAXED, self._resp)
        return int(self._res.value)

    def load_seq_cst(self) -> int:
        self._ld(self._addr, _SEQ_CST, self._resp)
        return int(self._res.value)

    def store(self, value: int) -> None:
        """Release store."""
        self._arg.value = value
        self._st(self._addr, self._argp, _RELEASE)

    def store_relaxed(self, value: int) -> None:
        self._arg.value = value
        self._st(self._addr, self._argp, _RELAXED)

    def store_seq_cst(self, value: int) -> None:
        self._arg.value = value
        self._st(self._addr, self._argp, _SEQ_CST)

    def fetch_add(self, value: int) -> int:
        """Sequentially consistent fetch-and-add (wraps modulo 2**width); returns the old value."""
        self._arg.value = value % (1 << (8 * self.width))
        self._fadd(self._addr, self._argp, _SEQ_CST, self._resp)
        return int(self._res.value)

    def compare_exchange(self, expected: int, desired: int) -> bool:
        """Sequentially consistent strong CAS; True when the word held `expected`."""
        self._exp.value = expected
        self._arg.value = desired
        return bool(self._cas(self._addr, self._expp, self._argp, _SEQ_CST, _SEQ_CST))

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None
            self._view = None
