"""Latency trace events: (call, reply generation, stage, t_ns) as JSON lines, written off the real-time path.

Every process stamps the stages it owns with `time.monotonic_ns()` (one clock for
the host) and writes them itself, through its own `TraceSink`: nothing crosses the
bus or the transport's event loop only to reach a file. Every sink appends to the
same file (`engine.trace_file`), each batch in one `write` on an O_APPEND
descriptor, so lines from different processes never interleave mid-line.
`engine.trace_report` reads the file back.

Stages of a reply, in order (a reply to the caller has them all; a greeting or
re-prompt starts at `reply_requested`):
speech_end, end_of_turn, transcript, reply_requested, llm_start, llm_first_token,
llm_first_sentence, tts_start, tts_first_audio, first_audio_out; and stt_start, when
Whisper began on the transcript's audio (at the pause, or after the turn ended).
A barge-in adds speech_onset, barge_in_heard and clear_sent to the reply it cut.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path

import msgspec

log = logging.getLogger("engine.trace")

MAX_QUEUED = 10_000  # minutes of a busy engine's stages (~10 a reply)


class TraceEvent(msgspec.Struct, kw_only=True):
    """One stage of one reply: when (monotonic ns) call `call`'s reply `gen` reached `stage`."""

    call: str
    gen: int
    stage: str
    t_ns: int


class TraceSink:
    """Appends trace events to a JSONL file from its own thread; `add` never blocks.

    At most `max_queued` events wait for the thread: past that (a stalled disk), or once the file cannot be
    opened at all, events are dropped and counted in `dropped`, so tracing never grows memory.
    """

    def __init__(self, path: Path, *, max_queued: int = MAX_QUEUED) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue[TraceEvent | None] = queue.Queue(max_queued)
        self._failed = False  # the file could not be opened: nothing will ever be written
        self.written = 0
        self._refused = 0  # counted by `add`'s thread
        self._lost = 0  # counted by the writer thread
        self._thread = threading.Thread(target=self._write_loop, name="trace-sink", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, path: str) -> TraceSink | None:
        """The sink for `engine.trace_file`; None when tracing is off (no path)."""
        return cls(Path(path)) if path else None

    @property
    def dropped(self) -> int:
        """Events that never reached the file: refused when the queue was full or the file unusable, or lost to a
        failed write."""
        return self._refused + self._lost

    @property
    def pending(self) -> int:
        """Events waiting for the writer thread."""
        return self._queue.qsize()

    def add(self, call: str, gen: int, stage: str, t_ns: int) -> None:
        if self._failed:
            self._refused += 1
            return
        try:
            self._queue.put_nowait(TraceEvent(call=call, gen=gen, stage=stage, t_ns=t_ns))
        except queue.Full:
            if not self._refused:
                log.error("trace file %s is not keeping up: dropping trace events", self.path)
            self._refused += 1

    def _write_loop(self) -> None:
        encoder = msgspec.json.Encoder()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            log.error("trace file %s: %s; tracing is off", self.path, exc)
            self._failed = True
            while True:  # free what was queued meanwhile
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    return
                self._lost += item is not None
        failing = False
        try:
            while True:
                event = self._queue.get()
                batch = [event]
                while True:  # write what has piled up in one go
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                lines = [encoder.encode(e) + b"\n" for e in batch if e is not None]
                try:
                    if lines:
                        os.write(fd, b"".join(lines))  # one write: the other processes' lines go before or after
                    self.written += len(lines)
                    failing = False
                except OSError as exc:  # a full disk must not take the calls down with it
                    self._lost += len(lines)
                    if not failing:  # once per run of failures, not once per batch
                        log.error("trace file %s: %s; dropping events until it is writable again", self.path, exc)
                    failing = True
                if None in batch:
                    return
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=5)  # the writer is draining: room comes
            except queue.Full:
                return
        self._thread.join(5)


def read_events(path: Path) -> list[TraceEvent]:
    """A trace file's events; a line cut short by a crash is skipped, not fatal."""
    decoder = msgspec.json.Decoder(TraceEvent)
    events: list[TraceEvent] = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            events.append(decoder.decode(line))
        except msgspec.DecodeError:
            continue
    return events
