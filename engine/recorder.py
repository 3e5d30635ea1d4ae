"""Per-call recording: both directions as 8 kHz WAV and every event as JSON lines.

The transport's event loop only enqueues; one writer thread does the file I/O and
flushes each file at least once a second, rewriting the WAV header's sizes each
time, so a crash loses at most the last second and leaves playable files. What
waits for the writer is bounded (a stalled disk drops audio, not memory), and the
files are private to this user (engine/private_files.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import struct
import threading
import time
from pathlib import Path
from typing import IO, Any

import msgspec

from engine.private_files import new_private_dir, new_private_file, private_root

log = logging.getLogger(__name__)

FLUSH_EVERY_S = 1.0
MAX_QUEUED_AUDIO_BYTES = 16 << 20  # 16 MiB: ~9 min of one call both ways, ~30 s of 16 calls' audio
MAX_QUEUED_EVENTS = 20_000
_WAV_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


def wav_header(sample_rate: int, data_bytes: int) -> bytes:
    return _WAV_HEADER.pack(b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, 1, sample_rate,
                            sample_rate * 2, 2, 16, b"data", data_bytes)


class _WavFile:
    def __init__(self, f: IO[bytes], sample_rate: int) -> None:
        self.rate = sample_rate
        self.data_bytes = 0
        self.f = f
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
    """One call's files, each new, 0600, in a new 0700 directory (engine/private_files.py): the audio both ways
    and the events as the call goes, and its `transcript.json` at the end. Owns `dir_fd` from here on."""

    def __init__(self, dir_fd: int) -> None:
        self.dir_fd = dir_fd
        opened: list[IO[bytes]] = []
        try:
            for name in ("inbound.wav", "outbound.wav", "events.jsonl"):
                opened.append(new_private_file(dir_fd, name))
        except BaseException:
            for f in opened:
                f.close()
            os.close(dir_fd)
            raise
        self.inbound = _WavFile(opened[0], 8000)
        self.outbound = _WavFile(opened[1], 8000)
        self.events = opened[2]

    def flush(self) -> None:
        self.inbound.flush()
        self.outbound.flush()
        self.events.flush()

    def write_transcript(self, transcript: bytes) -> None:
        with new_private_file(self.dir_fd, "transcript.json") as f:
            f.write(transcript)

    def close(self) -> None:
        try:
            self.inbound.close()
            self.outbound.close()
            self.events.close()
        finally:
            os.close(self.dir_fd)


class Recorder:
    """Owns the writer thread. `open`, `audio`, `event` and `close` never block the caller.

    A disk slower than the calls must not grow memory without end: past `max_queued_audio_bytes` of audio (or
    `max_queued_events` events) waiting for the writer, new ones are dropped and counted, with one warning per
    call; the call's `events.jsonl` then ends with how much was dropped. `open` and `close` are never dropped.
    """

    def __init__(self, root: Path, *, max_queued_audio_bytes: int = MAX_QUEUED_AUDIO_BYTES,
                 max_queued_events: int = MAX_QUEUED_EVENTS) -> None:
        self.root = root
        self.max_queued_audio_bytes = max_queued_audio_bytes
        self.max_queued_events = max_queued_events
        self._queue: queue.SimpleQueue[tuple[str, str, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the queued amounts: the event loop adds, the writer takes away
        self._queued_audio_bytes = 0
        self._queued_events = 0
        self._dropping: dict[str, dict[str, int]] = {}  # call -> what of it was dropped so far
        self.errors = 0
        self.dropped_audio_bytes = 0
        self.dropped_events = 0
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def open(self, call_id: str) -> None:
        self._queue.put((call_id, "open", None))

    def audio(self, call_id: str, direction: str, pcm: bytes) -> None:
        with self._lock:
            if self._queued_audio_bytes + len(pcm) > self.max_queued_audio_bytes:
                self.dropped_audio_bytes += len(pcm)
                self._dropped(call_id, "audio_bytes", len(pcm))
                return
            self._queued_audio_bytes += len(pcm)
        self._queue.put((call_id, direction, pcm))

    def event(self, call_id: str, event: dict[str, Any]) -> None:
        with self._lock:
            if self._queued_events >= self.max_queued_events:
                self.dropped_events += 1
                self._dropped(call_id, "events", 1)
                return
            self._queued_events += 1
        self._queue.put((call_id, "event", event))

    def close(self, call_id: str, transcript: dict[str, Any] | None = None) -> None:
        """The call is over: its files are closed, with `transcript` written beside them as transcript.json."""
        with self._lock:
            dropped = self._dropping.pop(call_id, None)
        if dropped:
            log.warning("recording %s is missing %d bytes of audio and %d events: the disk fell behind", call_id,
                        dropped.get("audio_bytes", 0), dropped.get("events", 0))
        self._queue.put((call_id, "close", (dropped, transcript)))

    def stop(self) -> None:
        """Flush and close everything; waits for the writer thread."""
        self._queue.put(("", "stop", None))
        self._thread.join(10)

    def _dropped(self, call_id: str, what: str, n: int) -> None:
        """Holding `_lock`: count what was dropped of `call_id`; warn at its first drop only."""
        dropped = self._dropping.get(call_id)
        if dropped is None:
            dropped = self._dropping[call_id] = {}
            log.warning("recording %s: the disk is falling behind; dropping its audio and events until it "
                        "catches up", call_id)
        dropped[what] = dropped.get(what, 0) + n

    def _taken(self, kind: str, payload: Any) -> None:
        """The writer took an item off the queue: it no longer counts against the bound."""
        if kind in ("inbound", "outbound"):
            with self._lock:
                self._queued_audio_bytes -= len(payload)
        elif kind == "event":
            with self._lock:
                self._queued_events -= 1

    def _open_call(self, call_id: str) -> _CallFiles:
        """A new directory for the call, never one already there: the same call streaming again gets `-2`, `-3`...
        A symlink or file where a directory is to go is refused (UnsafePath), not followed."""
        private_root(self.root)
        safe = "".join(c for c in call_id if c.isalnum() or c in "-_")
        n = 1
        while True:
            try:
                dir_fd = new_private_dir(self.root, safe if n == 1 else f"{safe}-{n}")
                break
            except FileExistsError:
                n += 1
        return _CallFiles(dir_fd)

    @staticmethod
    def _close_call(files: _CallFiles, dropped: dict[str, int] | None, transcript: dict[str, Any] | None,
                    encoder: msgspec.json.Encoder) -> None:
        try:
            if dropped:  # the recording has gaps: say so where it is read
                files.events.write(encoder.encode({"event": "recording_dropped", **dropped}) + b"\n")
            if transcript is not None:
                files.write_transcript(msgspec.json.format(encoder.encode(transcript), indent=2) + b"\n")
        finally:
            files.close()

    def _run(self) -> None:
        calls: dict[str, _CallFiles] = {}
        encoder = msgspec.json.Encoder()
        next_flush = time.monotonic() + FLUSH_EVERY_S
        while True:
            try:
                call_id, kind, payload = self._queue.get(timeout=max(0.0, next_flush - time.monotonic()))
            except queue.Empty:
                call_id, kind, payload = "", "tick", None
            self._taken(kind, payload)
            try:
                if kind == "stop":
                    for files in calls.values():
                        with contextlib.suppress(Exception):  # close the others whatever one does
                            files.close()
                    return
                if kind == "open":
                    calls[call_id] = self._open_call(call_id)
                elif call_id in calls:
                    files = calls[call_id]
                    if kind == "inbound":
                        files.inbound.write(payload)
                    elif kind == "outbound":
                        files.outbound.write(payload)
                    elif kind == "event":
                        files.events.write(encoder.encode(payload) + b"\n")
                    elif kind == "close":
                        dropped, transcript = payload
                        self._close_call(calls.pop(call_id), dropped, transcript, encoder)
            except Exception as exc:  # a full disk, a planted symlink, anything: the transport goes on
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
