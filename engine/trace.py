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
llm_first_sentence, tts_start, tts_first_audio, first_audio_out.
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


class TraceEvent(msgspec.Struct, kw_only=True):
    """One stage of one reply: when (monotonic ns) call `call`'s reply `gen` reached `stage`."""

    call: str
    gen: int
    stage: str
    t_ns: int


class TraceSink:
    """Appends trace events to a JSONL file from its own thread; `add` never blocks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._queue: queue.SimpleQueue[TraceEvent | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_loop, name="trace-sink", daemon=True)
        self._thread.start()
        self.written = 0

    @classmethod
    def open(cls, path: str) -> TraceSink | None:
        """The sink for `engine.trace_file`; None when tracing is off (no path)."""
        return cls(Path(path)) if path else None

    def add(self, call: str, gen: int, stage: str, t_ns: int) -> None:
        self._queue.put(TraceEvent(call=call, gen=gen, stage=stage, t_ns=t_ns))

    def _write_loop(self) -> None:
        encoder = msgspec.json.Encoder()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
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
                except OSError as exc:  # a full disk must not take the calls down with it
                    log.error("trace file %s: %s; %d events lost", self.path, exc, len(lines))
                if None in batch:
                    return
        finally:
            os.close(fd)

    def close(self) -> None:
        self._queue.put(None)
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
