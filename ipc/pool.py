"""The pool of per-call ring pairs, pre-allocated by the supervisor for `max_calls`.

One shared-memory segment holds a header, the doorbells, a lease table and
`max_calls` pairs of rings (inbound: caller audio, transport -> speech; outbound:
bot audio, tts -> transport). A call leases a free pair with a compare-and-swap
on its table entry; each lease gets a fresh epoch, stamped into both rings so
frames of an earlier call on the same pair are never taken for this call's.

Doorbells: one per consuming side. `inbound` is rung for the speech process,
`outbound` for the transport, whatever call the frame belongs to.
"""

from __future__ import annotations

import os
import struct
import time
from typing import NamedTuple

from ipc.atomic import AtomicWord
from ipc.futex import DOORBELL_BYTES, Doorbell
from ipc.ring import Ring, ring_bytes
from ipc.shm import ShmSegment

POOL_MAGIC = 0x504F4F4C  # "POOL"
POOL_VERSION = 2
_HEADER = struct.Struct("<IIIIIQ")
HEADER_BYTES = 64
DOORBELLS = ("inbound", "outbound")
LEASE_BYTES = 128
CALL_ID_BYTES = 64
_U64 = struct.Struct("<Q")
_PID_MASK = 0xFFFFFFFF

# A lease table entry (128 B):
#   +0   state     u64   0 = free, else (epoch << 32) | owner pid: taken and returned by one CAS each
#   +8   epochs    u64   per-slot counter; each lease takes the next value (32 bits used)
#   +16  leased_at u64   monotonic ns, for diagnostics
#   +64  call id   64 B  utf-8, NUL-padded, for diagnostics and for telling peers what was reclaimed


class Lease(NamedTuple):
    """A ring pair leased to a call: its slot, and the epoch the lease stamped on both rings."""

    slot: int
    epoch: int
    call_id: str


class LeaseInfo(NamedTuple):
    """A live lease as the pool's table records it, with who holds it and since when."""

    slot: int
    epoch: int
    call_id: str
    owner_pid: int
    leased_t_ns: int


def pool_bytes(max_calls: int, slots: int, capacity: int) -> int:
    return (HEADER_BYTES + DOORBELL_BYTES * len(DOORBELLS) + LEASE_BYTES * max_calls
            + 2 * max_calls * ring_bytes(slots, capacity))


class RingPool:
    """Access to the pool segment; `create` in the supervisor, `attach` everywhere else."""

    def __init__(self, segment: ShmSegment, *, owner: bool) -> None:
        self.segment = segment
        self.owner = owner
        buf = segment.buf
        magic, version, self.max_calls, self.slots, self.capacity, self.creator_pid = _HEADER.unpack_from(buf, 0)
        if magic != POOL_MAGIC or version != POOL_VERSION:
            raise ValueError(f"shared-memory segment {segment.name} is not a ring pool of version {POOL_VERSION}")
        self.doorbells: dict[str, Doorbell] = {}
        self._state: list[AtomicWord] = []
        self._epochs: list[AtomicWord] = []
        self.inbound: list[Ring] = []
        self.outbound: list[Ring] = []
        try:
            off = HEADER_BYTES
            for name in DOORBELLS:
                self.doorbells[name] = Doorbell(buf, off)
                off += DOORBELL_BYTES
            self._lease_base = off
            for i in range(self.max_calls):
                self._state.append(AtomicWord(buf, off + i * LEASE_BYTES))
                self._epochs.append(AtomicWord(buf, off + i * LEASE_BYTES + 8))
            off += LEASE_BYTES * self.max_calls
            rb = ring_bytes(self.slots, self.capacity)
            for _ in range(self.max_calls):
                self.inbound.append(Ring(buf, off, self.doorbells["inbound"]))
                self.outbound.append(Ring(buf, off + rb, self.doorbells["outbound"]))
                off += 2 * rb
        except BaseException:
            self._close_views()  # else the segment cannot be unmapped and the real error is hidden
            raise

    @classmethod
    def create(cls, name: str, max_calls: int, slots: int, capacity: int) -> RingPool:
        segment = ShmSegment.create(name, pool_bytes(max_calls, slots, capacity))
        try:
            buf = segment.buf
            _HEADER.pack_into(buf, 0, POOL_MAGIC, POOL_VERSION, max_calls, slots, capacity, os.getpid())
            off = HEADER_BYTES + DOORBELL_BYTES * len(DOORBELLS) + LEASE_BYTES * max_calls
            rb = ring_bytes(slots, capacity)
            for _ in range(2 * max_calls):
                Ring.format(buf, off, slots, capacity, zeroed=True)
                off += rb
            return cls(segment, owner=True)
        except BaseException:
            segment.unlink()
            segment.close()
            raise

    @classmethod
    def attach(cls, name: str) -> RingPool:
        segment = ShmSegment.attach(name)
        try:
            return cls(segment, owner=False)
        except BaseException:
            segment.close()
            raise

    def doorbell_view(self, name: str) -> Doorbell:
        """A separate Doorbell object on the same word, for another thread (AtomicWord objects are per thread)."""
        return Doorbell(self.segment.buf, HEADER_BYTES + DOORBELL_BYTES * DOORBELLS.index(name))

    def _entry(self, slot: int) -> int:
        return self._lease_base + slot * LEASE_BYTES

    def lease(self, call_id: str) -> Lease | None:
        """Take a free ring pair for `call_id`; None when all `max_calls` are in use.

        One compare-and-swap makes the slot ours, with our pid and the new epoch in
        the same word: a lessee that dies at any point leaves a slot that
        `reclaim_owner` can free.
        """
        raw = call_id.encode()
        if len(raw) > CALL_ID_BYTES:
            raise ValueError(f"call id longer than {CALL_ID_BYTES} bytes: {call_id!r}")
        pid = os.getpid() & _PID_MASK
        for slot in range(self.max_calls):
            if self._state[slot].load() != 0:
                continue
            epoch = (self._epochs[slot].fetch_add(1) + 1) & 0xFFFFFFFF or 1
            if not self._state[slot].compare_exchange(0, (epoch << 32) | pid):
                continue
            entry = self._entry(slot)
            buf = self.segment.buf
            _U64.pack_into(buf, entry + 16, time.monotonic_ns())
            buf[entry + 64:entry + 64 + CALL_ID_BYTES] = raw.ljust(CALL_ID_BYTES, b"\0")
            self.inbound[slot].set_epoch(epoch)
            self.outbound[slot].set_epoch(epoch)
            return Lease(slot, epoch, call_id)
        return None

    def release(self, lease: Lease) -> bool:
        """Return a ring pair; False if it was already returned or reclaimed."""
        return self._state[lease.slot].compare_exchange((lease.epoch << 32) | (os.getpid() & _PID_MASK), 0)

    def leases(self) -> list[LeaseInfo]:
        out = []
        buf = self.segment.buf
        for slot in range(self.max_calls):
            state = self._state[slot].load()
            if state == 0:
                continue
            entry = self._entry(slot)
            (t_ns,) = _U64.unpack_from(buf, entry + 16)
            call_id = bytes(buf[entry + 64:entry + 64 + CALL_ID_BYTES]).rstrip(b"\0").decode(errors="replace")
            out.append(LeaseInfo(slot, state >> 32, call_id, state & _PID_MASK, t_ns))
        return out

    def reclaim_owner(self, pid: int) -> list[LeaseInfo]:
        """Free every lease held by `pid` (a transport that died); returns what was freed."""
        freed = []
        for info in self.leases():
            if info.owner_pid == pid and self._state[info.slot].compare_exchange((info.epoch << 32) | pid, 0):
                freed.append(info)
        return freed

    def _close_views(self) -> None:
        for ring in self.inbound + self.outbound:
            ring.close()
        for bell in self.doorbells.values():
            bell.close()
        for word in self._state + self._epochs:
            word.close()

    def close(self) -> None:
        self._close_views()
        self.segment.close()

    def unlink(self) -> None:
        self.segment.unlink()
