"""Lock-free single-producer/single-consumer ring of audio frames in shared memory.

Layout of one ring (offsets from the ring's base, all little-endian):

    line 0  (  0) write_idx  u64   producer-owned, release-stored after the slot is written
    line 1  ( 64) read_idx   u64   consumer-owned, release-stored after the slot is copied out
            ( 72) stale      u64   frames the consumer skipped because of an old epoch
    line 2  (128) next_seq   u64   producer's frame counter, counts drops too
            (136) drops      u64   frames refused because the ring was full
            (144) epoch      u64   the epoch producers stamp now (set when a call leases the ring)
            (152) producers  u64   producer incarnations attached so far
    line 3  (192) magic u32, slots u32, capacity u32 (payload bytes per slot), stride u32
    then `slots` slots of `stride` bytes: a 40-byte slot header
            seq u64, t_ns u64, epoch u64, sample_rate u32, length u32, flags u32, producer u32
    followed by the payload.

Indices are monotonic u64 (arithmetic modulo 2**64) on their own cache lines; the
slot is `index & (slots - 1)`. Each side keeps its own index in a local variable
and a cached copy of the other side's, reloading it only when the cache says the
ring is full (producer) or empty (consumer), so a frame costs a couple of atomic
operations, not a handful. A producer never blocks: a full ring refuses the
frame and counts it. Sequence numbers include refused frames, so a consumer sees
drops as gaps. Every slot carries the epoch it was written under and the producer
incarnation that wrote it: a consumer of a reused ring skips frames of an earlier
call, and notices when a restarted producer took over.
"""

from __future__ import annotations

import struct
import time
from typing import NamedTuple

from ipc.atomic import AtomicWord
from ipc.futex import Doorbell

MAGIC = 0x52494E47  # "RING"
FLAG_MARK = 1
"""Outbound: tell the transport to send Twilio a mark named str(seq) once this frame has been sent."""
FLAG_END = 2
"""Outbound: last frame of an utterance; flush resampler and partial frames so it all plays."""
GEN_SHIFT = 8
"""Outbound: the reply generation a frame belongs to rides in the flags' upper 24 bits, so the transport
can drop a cancelled reply's frames that were already in the ring when it was cancelled."""
GEN_MASK = (1 << 24) - 1


def gen_flags(gen: int) -> int:
    return (gen & GEN_MASK) << GEN_SHIFT


def flags_gen(flags: int) -> int:
    return (flags >> GEN_SHIFT) & GEN_MASK
HEADER_BYTES = 256
SLOT_HEADER = struct.Struct("<QQQIIII")
_U64 = struct.Struct("<Q")
_STATIC = struct.Struct("<IIII")
_MASK64 = (1 << 64) - 1

_OFF_WRITE = 0
_OFF_READ = 64
_OFF_STALE = 72
_OFF_SEQ = 128
_OFF_DROPS = 136
_OFF_EPOCH = 144
_OFF_PRODUCERS = 152
_OFF_STATIC = 192


def slot_stride(capacity: int) -> int:
    return (SLOT_HEADER.size + capacity + 63) // 64 * 64


def ring_bytes(slots: int, capacity: int) -> int:
    return HEADER_BYTES + slots * slot_stride(capacity)


class Frame(NamedTuple):
    """One frame read from a ring: its header fields and payload."""

    seq: int
    t_ns: int
    epoch: int
    sample_rate: int
    flags: int
    producer: int
    payload: bytes


class RingStats(NamedTuple):
    """A ring's counters, for /health."""

    written: int
    read: int
    drops: int
    stale: int
    backlog: int
    epoch: int
    producers: int


class Ring:
    """View of one ring inside a shared buffer. Open a `RingWriter` or `RingReader` on it."""

    def __init__(self, buf: memoryview, offset: int, doorbell: Doorbell) -> None:
        self.buf = buf
        self.base = offset
        magic, slots, capacity, stride = _STATIC.unpack_from(buf, offset + _OFF_STATIC)
        self.slots: int = slots
        self.capacity: int = capacity
        self.stride: int = stride
        if magic != MAGIC:
            raise ValueError(f"no ring at offset {offset} (magic {magic:#x})")
        self.mask: int = slots - 1
        self.doorbell = doorbell
        self._write = AtomicWord(buf, offset + _OFF_WRITE)
        self._read = AtomicWord(buf, offset + _OFF_READ)
        self._epoch = AtomicWord(buf, offset + _OFF_EPOCH)
        self._producers = AtomicWord(buf, offset + _OFF_PRODUCERS)
        # Counters are single-writer, but /health reads them from other processes: atomic, so never torn.
        self._seq = AtomicWord(buf, offset + _OFF_SEQ)
        self._drops = AtomicWord(buf, offset + _OFF_DROPS)
        self._stale = AtomicWord(buf, offset + _OFF_STALE)

    @staticmethod
    def format(buf: memoryview, offset: int, slots: int, capacity: int, start_index: int = 0,
               zeroed: bool = False) -> None:
        """Initialise a ring (`zeroed`: the memory is known to be zero already, e.g. a new segment).

        `start_index` exists to test u64 wrap-around.
        """
        if slots < 2 or slots & (slots - 1):
            raise ValueError(f"ring slots must be a power of two >= 2, got {slots}")
        if not zeroed:
            buf[offset:offset + ring_bytes(slots, capacity)] = bytes(ring_bytes(slots, capacity))
        _U64.pack_into(buf, offset + _OFF_WRITE, start_index & _MASK64)
        _U64.pack_into(buf, offset + _OFF_READ, start_index & _MASK64)
        _STATIC.pack_into(buf, offset + _OFF_STATIC, MAGIC, slots, capacity, slot_stride(capacity))

    def slot_offset(self, index: int) -> int:
        return self.base + HEADER_BYTES + (index & self.mask) * self.stride

    @property
    def epoch(self) -> int:
        return int(self._epoch.load())

    def set_epoch(self, epoch: int) -> None:
        """Start a new epoch (a new call on this ring). Producers stamp it from now on."""
        self._epoch.store(epoch)

    def available(self) -> int:
        """Frames published and not yet consumed (safe to call from the consumer).

        Sequentially consistent: it is the re-check in the doorbell handshake.
        """
        return int((self._write.load_seq_cst() - self._read.load_relaxed()) & _MASK64)

    def stats(self) -> RingStats:
        """A racy but untorn snapshot, for health reporting from any process."""
        w = self._write.load_relaxed()
        r = self._read.load_relaxed()
        seq, drops, stale = self._seq.load_relaxed(), self._drops.load_relaxed(), self._stale.load_relaxed()
        return RingStats(seq - drops, r, drops, stale, (w - r) & _MASK64,
                         self._epoch.load_relaxed(), self._producers.load_relaxed())

    def close(self) -> None:
        for word in (self._write, self._read, self._epoch, self._producers, self._seq, self._drops, self._stale):
            word.close()


class RingWriter:
    """The single producer of a ring. Attaching counts as a new producer incarnation.

    Frames are stamped with the writer's `epoch` (by default the ring's epoch when
    the writer attached). Once the ring has moved on to another call, writes from
    a writer of the earlier call are refused, so a late producer never speaks into
    somebody else's call.
    """

    def __init__(self, ring: Ring, epoch: int | None = None) -> None:
        self.ring = ring
        self.epoch = ring.epoch if epoch is None else epoch
        self.refused_stale = 0
        self.producer = (ring._producers.fetch_add(1) + 1) & 0xFFFFFFFF
        self._w = ring._write.load()  # ours alone from here on
        self._r_cached = ring._read.load()
        self._seq = ring._seq.load()
        self._drops = ring._drops.load()

    @property
    def drops(self) -> int:
        return self._drops

    @property
    def next_seq(self) -> int:
        """The seq the next frame will carry (the transport names marks by seq)."""
        return self._seq

    def has_room(self) -> bool:
        """Whether a frame written now finds a free slot (it may still be refused for a stale epoch). Asking
        counts no drop, so a producer with somewhere else to keep a frame can ask first."""
        ring = self.ring
        if (self._w - self._r_cached) & _MASK64 >= ring.slots:
            self._r_cached = ring._read.load()
        return (self._w - self._r_cached) & _MASK64 < ring.slots

    def write(self, payload: bytes | bytearray | memoryview, sample_rate: int,
              t_ns: int | None = None, flags: int = 0) -> bool:
        """Publish one frame; False (and counted) when the ring is full. Never blocks."""
        ring = self.ring
        n = len(payload)
        if n > ring.capacity:
            raise ValueError(f"frame of {n} B exceeds the ring's {ring.capacity} B slots")
        if ring._epoch.load_relaxed() != self.epoch:
            self.refused_stale += 1
            return False
        seq = self._seq
        self._seq = seq + 1
        ring._seq.store_relaxed(self._seq)
        w = self._w
        if (w - self._r_cached) & _MASK64 >= ring.slots:
            self._r_cached = ring._read.load()
        if (w - self._r_cached) & _MASK64 >= ring.slots:
            self._drops += 1
            ring._drops.store_relaxed(self._drops)
            return False
        off = ring.slot_offset(w)
        SLOT_HEADER.pack_into(ring.buf, off, seq, time.monotonic_ns() if t_ns is None else t_ns,
                              self.epoch, sample_rate, n, flags, self.producer)
        start = off + SLOT_HEADER.size
        ring.buf[start:start + n] = payload
        self._w = (w + 1) & _MASK64
        # Sequentially consistent, not just release: the doorbell's waiter check must not pass it.
        ring._write.store_seq_cst(self._w)
        ring.doorbell.ring()
        return True


class RingReader:
    """The single consumer of a ring.

    With `epoch` set, frames stamped with any other epoch (an earlier call on a
    reused ring) are skipped and counted as stale instead of being returned.
    """

    def __init__(self, ring: Ring, epoch: int | None = None) -> None:
        self.ring = ring
        self.epoch = epoch
        self.last_producer = 0
        self._stale = ring._stale.load()
        self._r = ring._read.load()  # ours alone from here on
        self._w_cached = self._r

    def read(self) -> Frame | None:
        """Next frame of this epoch, or None when the ring is empty. Never blocks.

        A reader whose call is over (the ring has moved on to a newer epoch) is
        inert: it returns None and never touches the read index, which now
        belongs to the new call's reader.
        """
        ring = self.ring
        if self.epoch is not None and ring._epoch.load() != self.epoch:
            return None
        while True:
            r = self._r
            if r == self._w_cached:
                self._w_cached = ring._write.load()
                if r == self._w_cached:
                    return None
            off = ring.slot_offset(r)
            seq, t_ns, epoch, rate, n, flags, producer = SLOT_HEADER.unpack_from(ring.buf, off)
            start = off + SLOT_HEADER.size
            payload = bytes(ring.buf[start:start + n])
            self._r = (r + 1) & _MASK64
            ring._read.store(self._r)
            if self.epoch is not None and epoch != self.epoch:
                self._stale += 1
                ring._stale.store_relaxed(self._stale)
                continue
            self.last_producer = producer
            return Frame(seq, t_ns, epoch, rate, flags, producer, payload)

    def discard_all(self) -> int:
        """Skip everything published so far (a call ended; its leftovers are worthless).

        Does nothing once the ring belongs to a newer epoch.
        """
        ring = self.ring
        if self.epoch is not None and ring._epoch.load() != self.epoch:
            return 0
        r = self._r
        w = self._w_cached = ring._write.load()
        self._r = w
        ring._read.store(w)
        return int((w - r) & _MASK64)

    def wait(self, timeout_s: float, spin_s: float = 50e-6) -> bool:
        """Block until a frame is available or `timeout_s` passes; True if one is."""
        return self.ring.doorbell.wait(lambda: self.ring.available() > 0, timeout_s, spin_s)
