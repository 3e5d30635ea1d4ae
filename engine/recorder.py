"""Per-call recording: both directions as 8 kHz WAV and every event as JSON lines.

The transport's event loop only enqueues; one writer thread does the file I/O and
flushes each file at least once a second, rewriting the WAV header's sizes each
time, so a crash loses at most the last second and leaves playable files.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import struct
import threading
import time
from pathlib import Path
from typing import IO, Any

import msgspec

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 1.0
_WAV_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


def wav_header(sample_rate: int, data_bytes: int) -> bytes:
    return _WAV_HEADER.pack(b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, 1, sample_rate,
                            sample_rate * 2, 2, 16, b"data", data_bytes)


class _WavFile:
    def __init__(self, path: Path, sample_rate: int) -> None:
        self.rate = sample_rate
        self.data_bytes = 0
        self.f: IO[bytes] = open(path, "wb")  # noqa: SIM115 (closed by CallRecording.close)
        self.f.write(wav_header(sample_rate, 0))

    def write(self, pcm: bytes) -> None:
        self.f.write(pcm)
        self.data_bytes += len(pcm)

    def flush(self) -> None:
        end = self.f.tell()
        self.f.seek(0)
        self.f.write(wav_header(self.rate, self.data_bytes))
        self.f.seek(end)
        self.f.flush()

    def close(self) -> None:
        self.flush()
        self.f.close()


class _CallFiles:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.inbound = _WavFile(directory / "inbound.wav", 8000)
        self.outbound = _WavFile(directory / "outbound.wav", 8000)
        self.events: IO[bytes] = open(directory / "events.jsonl", "ab")  # noqa: SIM115

    def flush(self) -> None:
        self.inbound.flush()
        self.outbound.flush()
        self.events.flush()

    def close(self) -> None:
        self.inbound.close()
        self.outbound.close()
        self.events.close()


class Recorder:
    """Owns the writer thread. `open`, `audio`, `event` and `close` never block the caller."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._queue: queue.SimpleQueue[tuple[str, str, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        self.errors = 0

    def open(self, call_id: str) -> None:
        self._queue.put((call_id, "open", None))

    def audio(self, call_id: str, direction: str, pcm: bytes) -> None:
        self._queue.put((call_id, direction, pcm))

    def event(self, call_id: str, event: dict[str, Any]) -> None:
        self._queue.put((call_id, "event", event))

    def close(self, call_id: str) -> None:
        self._queue.put((call_id, "close", None))

    def stop(self) -> None:
        """Flush and close everything; waits for the writer thread."""
        self._queue.put(("", "stop", None))
        self._thread.join(10)

    def _run(self) -> None:
        calls: dict[str, _CallFiles] = {}
        encoder = msgspec.json.Encoder()
        next_flush = time.monotonic() + FLUSH_EVERY_S
        while True:
            try:
                call_id, kind, payload = self._queue.get(timeout=max(0.0, next_flush - time.monotonic()))
            except queue.Empty:
                call_id, kind, payload = "", "tick", None
            try:
                if kind == "stop":
                    for files in calls.values():
                        with contextlib.suppress(Exception):  # close the others whatever one does
                            files.close()
                    return
                if kind == "open":
                    safe = "".join(c for c in call_id if c.isalnum() or c in "-_")
                    directory, n = self.root / safe, 1
                    while directory.exists():  # the same call streaming again: never overwrite its first part
                        n += 1
                        directory = self.root / f"{safe}-{n}"
                    calls[call_id] = _CallFiles(directory)
                elif call_id in calls:
                    files = calls[call_id]
                    if kind == "inbound":
                        files.inbound.write(payload)
                    elif kind == "outbound":
                        files.outbound.write(payload)
                    elif kind == "event":
                        files.events.write(encoder.encode(payload) + b"\n")
                    elif kind == "close":
                        calls.pop(call_id).close()
            except Exception as exc:  # a full disk (or anything else) must not take the transport down
                self.errors += 1
                log.error("recording %s failed: %s", call_id or "(all)", exc)
            if time.monotonic() >= next_flush:
                for files in calls.values():
                    try:
                        files.flush()
                    except Exception as exc:
                        self.errors += 1
                        log.error("recording flush failed: %s", exc)
                next_flush = time.monotonic() + FLUSH_EVERY_S
