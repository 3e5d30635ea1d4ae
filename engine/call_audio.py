"""One call's audio between Twilio and the rings: no sockets, no event loop.

Inbound: μ-law from a `media` message -> PCM16 at 8 kHz -> resampled -> the call's
inbound ring, the moment it arrives. While the ring is full (the speech process is
restarting: the ring holds 1.28 s, a restart takes longer) frames wait in a bounded
spill, and go into the ring, oldest first, as soon as it has room again: the
restarted reader resumes at the ring's read index, so it hears all of it.

Outbound: frames from the outbound ring (at the TTS's rate) -> 8 kHz -> μ-law, cut
into 20 ms `media` messages that leave only as fast as `OutboundPacer` allows; a
frame flagged FLAG_MARK is followed by a `mark` once all its audio has been sent.

Each outbound frame carries its reply's generation: after a `clear(gen)`, frames of
that reply (or older) still in the ring or written late are dropped, not played.
A provisional reply's audio is `hold`-en: taken from the ring (so the TTS never
waits on it) but not sent until `release`, or dropped by `discard`.
The play-out clock of the pacer says which ring frame the caller has heard last
(`played_seq`), which is how an interrupted reply's heard words are found.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from engine.codec import StreamResampler, mulaw_to_pcm16, pcm16_to_mulaw
from engine.media_stream import clear_message, mark_message, media_message
from engine.pacing import OutboundPacer
from ipc.ring import FLAG_END, FLAG_MARK, RingReader, RingWriter, flags_gen

TWILIO_RATE = 8000
FRAME_BYTES = 160  # 20 ms of 8 kHz μ-law
MULAW_SILENCE = 0xFF
LATE_INBOUND_MS = 60.0
"""An inbound frame arriving this far behind the line's own schedule (its Twilio timestamp) is late: the
VAD hears the caller that much later than it could have."""

RecordFn = Callable[[str, bytes], None]


class CallAudio:
    """One call's audio both ways: Twilio media in to the inbound ring; the outbound ring out as paced Twilio media,
    marks and clears."""

    def __init__(self, stream_sid: str, inbound: RingWriter, outbound: RingReader, *, inbound_rate: int,
                 lead_s: float, spill_s: float = 5.0, record: RecordFn | None = None) -> None:
        self.stream_sid = stream_sid
        self.inbound = inbound
        self.outbound = outbound
        self.inbound_rate = inbound_rate
        self._in_resampler = StreamResampler(TWILIO_RATE, inbound_rate)
        self._out_resampler: StreamResampler | None = None
        self._record = record
        self.pacer = OutboundPacer(lead_s)
        self._pending = bytearray()  # μ-law waiting to be sent
        self._queued_pos = 0  # absolute μ-law byte positions: end of what was queued / sent
        self._sent_pos = 0
        self._marks: deque[tuple[int, str]] = deque()
        self._frame_ends: deque[tuple[int, int]] = deque()  # (queued_pos after it, ring seq) of frames queued
        self._played_seq: int | None = None
        self._gen_starts: deque[tuple[int, int]] = deque()  # (queued_pos before it, gen) of each reply's 1st frame
        self._last_gen = 0
        self.min_gen = 0  # frames of older replies were cleared: drop them
        self.held_gen: int | None = None  # a provisional reply whose audio waits for its turn to end
        self.gens_started: list[int] = []  # replies whose first audio has been sent; the owner empties it
        self.frames_in = 0
        self._spill: deque[tuple[bytes, int]] = deque()  # (payload, arrival t_ns) waiting for room in the ring
        self._spill_bytes = 0
        self._spill_max_bytes = int(spill_s * inbound_rate) * 2
        self.inbound_spilled = 0  # frames that waited in the spill (none of them lost)
        self.inbound_dropped = 0  # frames lost: ring full and spill full, or the ring no longer this call's
        self.inbound_late = 0
        self.inbound_max_late_ms = 0.0
        self.last_timestamp_ms: int | None = None  # of the last media frame taken in
        self._min_offset_ms: float | None = None  # arrival minus timestamp, at its smallest: the on-time frame
        self.outbound_gaps = 0  # bot frames missing between TTS and us (ring sequence gaps not due to a clear)
        self._next_out_seq: int | None = None
        self.frames_out = 0
        self.marks_sent = 0
        self.frames_dropped_cleared = 0

    # --- inbound ----------------------------------------------------------------------
    def on_media(self, mulaw: bytes, t_ns: int, timestamp_ms: int | None = None) -> None:
        if timestamp_ms is not None:
            self._note_arrival(t_ns, timestamp_ms)
        pcm8 = mulaw_to_pcm16(mulaw)
        if self._record is not None:
            self._record("inbound", pcm8.tobytes())
        pcm = self._in_resampler.process(pcm8)
        self.frames_in += 1
        if len(pcm) == 0:
            return
        data = pcm.tobytes()
        cap = self.inbound.ring.capacity
        for start in range(0, len(data), cap):
            self._take_in(data[start:start + cap], t_ns)

    def _take_in(self, payload: bytes, t_ns: int) -> None:
        """Into the ring behind whatever waits in the spill; into the spill if the ring is full (its oldest frame
        dropped if that is full too)."""
        self.flush_spill()
        if not self._spill and (self._spill_max_bytes <= 0 or self.inbound.has_room()):
            if not self.inbound.write(payload, self.inbound_rate, t_ns):
                self.inbound_dropped += 1
            return
        self._spill.append((payload, t_ns))
        self._spill_bytes += len(payload)
        self.inbound_spilled += 1
        while self._spill_bytes > self._spill_max_bytes:
            self._spill_bytes -= len(self._spill.popleft()[0])
            self.inbound_dropped += 1

    def flush_spill(self) -> int:
        """Move what waits in the spill into the ring, oldest first, while it has room; returns frames moved."""
        moved = 0
        while self._spill and self.inbound.has_room():
            payload, t_ns = self._spill.popleft()
            self._spill_bytes -= len(payload)
            moved += 1
            if not self.inbound.write(payload, self.inbound_rate, t_ns):
                self.inbound_dropped += 1
        return moved

    @property
    def spill_frames(self) -> int:
        """Frames waiting in the spill now."""
        return len(self._spill)

    def _note_arrival(self, t_ns: int, timestamp_ms: int) -> None:
        """Lateness against the line's schedule, anchored on the earliest-arriving frame so far."""
        self.last_timestamp_ms = timestamp_ms
        offset = t_ns / 1e6 - timestamp_ms
        if self._min_offset_ms is None or offset < self._min_offset_ms:
            self._min_offset_ms = offset
        late = offset - self._min_offset_ms
        if late > LATE_INBOUND_MS:
            self.inbound_late += 1
        self.inbound_max_late_ms = max(self.inbound_max_late_ms, late)

    # --- outbound ---------------------------------------------------------------------
    def _queue_pcm(self, pcm: np.ndarray, rate: int) -> None:
        if self._out_resampler is None or self._out_resampler.in_rate != rate:
            self._out_resampler = StreamResampler(rate, TWILIO_RATE)
        self._queue_mulaw(pcm16_to_mulaw(self._out_resampler.process(pcm)))

    def _queue_mulaw(self, mulaw: bytes) -> None:
        self._pending += mulaw
        self._queued_pos += len(mulaw)

    def pull(self) -> int:
        """Move everything the TTS has published into the send queue; returns frames taken."""
        n = 0
        while (frame := self.outbound.read()) is not None:
            n += 1
            if self._next_out_seq is not None and frame.seq > self._next_out_seq:
                self.outbound_gaps += frame.seq - self._next_out_seq
            self._next_out_seq = frame.seq + 1
            gen = flags_gen(frame.flags)
            if gen < self.min_gen:
                self.frames_dropped_cleared += 1
                continue
            if gen > self._last_gen:
                self._last_gen = gen
                self._gen_starts.append((self._queued_pos, gen))
            self._queue_pcm(np.frombuffer(frame.payload, np.int16), frame.sample_rate)
            if frame.flags & FLAG_END and self._out_resampler is not None:
                self._queue_mulaw(pcm16_to_mulaw(self._out_resampler.flush()))
                partial = len(self._pending) % FRAME_BYTES
                if partial:
                    self._queue_mulaw(bytes([MULAW_SILENCE]) * (FRAME_BYTES - partial))
            if frame.flags & FLAG_MARK:
                self._marks.append((self._queued_pos, str(frame.seq)))
            self._frame_ends.append((self._queued_pos, frame.seq))
        return n

    def due_messages(self, now: float) -> list[str]:
        """Twilio messages that may be sent now, in order."""
        out: list[str] = []
        while True:
            while self._marks and self._marks[0][0] <= self._sent_pos:
                out.append(mark_message(self.stream_sid, self._marks.popleft()[1]))
                self.marks_sent += 1
            if len(self._pending) < FRAME_BYTES or self.held_gen is not None or not self.pacer.may_send(now):
                return out
            chunk = bytes(self._pending[:FRAME_BYTES])
            del self._pending[:FRAME_BYTES]
            while self._gen_starts and self._gen_starts[0][0] <= self._sent_pos:
                self.gens_started.append(self._gen_starts.popleft()[1])
            self._sent_pos += FRAME_BYTES
            self.pacer.sent(now)
            self.frames_out += 1
            if self._record is not None:
                self._record("outbound", mulaw_to_pcm16(chunk).tobytes())
            out.append(media_message(self.stream_sid, chunk))

    def next_due_at(self) -> float | None:
        """When `due_messages` will next have something, if audio is waiting; None if nothing is."""
        if len(self._pending) >= FRAME_BYTES and self.held_gen is None:
            return self.pacer.next_send_at()
        return None

    def played_seq(self, now: float) -> int | None:
        """The ring seq of the last bot frame the caller has heard by now, by the play-out clock."""
        played_pos = self._sent_pos - round(self.pacer.queued_s(now) * TWILIO_RATE)
        while self._frame_ends and self._frame_ends[0][0] <= played_pos:
            self._played_seq = self._frame_ends.popleft()[1]
        return self._played_seq

    def hold(self, gen: int) -> None:
        """Keep provisional reply `gen`'s audio from the caller until `release`."""
        self.held_gen = gen

    def release(self, gen: int) -> None:
        """Reply `gen` is the answer: its audio may go now."""
        if self.held_gen == gen:
            self.held_gen = None

    def clear(self, now: float, gen: int = 0) -> str:
        """Barge-in: forget all unsent bot audio and marks, and any frame of reply `gen` or older still to
        come; returns the Twilio `clear` to send."""
        self.discard(now, gen)
        return clear_message(self.stream_sid)

    def discard(self, now: float, gen: int) -> None:
        """Forget all unsent bot audio and marks, and any frame of reply `gen` or older still to come (a
        provisional reply nobody heard needs no Twilio `clear`)."""
        self.played_seq(now)
        self.min_gen = max(self.min_gen, gen + 1)
        self._frame_ends.clear()
        self._gen_starts.clear()
        self.outbound.discard_all()
        self._next_out_seq = None  # the discarded frames are a gap that was meant
        self._pending.clear()
        self._sent_pos = self._queued_pos
        self._marks.clear()
        self._out_resampler = None  # its filter still holds the cleared audio's tail
        self.pacer.reset(now)
        if self.held_gen is not None and self.held_gen <= gen:
            self.held_gen = None
