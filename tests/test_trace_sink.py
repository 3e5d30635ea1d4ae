"""The trace sink never grows memory: a stalled or unusable trace file drops events, counted, instead."""

from __future__ import annotations

import os
from pathlib import Path

from engine.trace import TraceSink


def add_events(sink: TraceSink, n: int) -> None:
    for i in range(n):
        sink.add("CA1", 1, "llm_start", i)


def test_a_stalled_file_holds_at_most_max_queued_events_and_the_rest_are_counted(tmp_path: Path) -> None:
    fifo = tmp_path / "trace.jsonl"
    os.mkfifo(fifo)  # the writer's open blocks until someone reads: a disk that has stopped
    sink = TraceSink(fifo, max_queued=100)
    add_events(sink, 1000)
    assert (sink.pending, sink.dropped) == (100, 900)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the disk comes back
    try:
        sink.close()
        data = b""
        while chunk := os.read(reader, 1 << 16):
            data += chunk
    finally:
        os.close(reader)
    assert len(data.splitlines()) == sink.written == 100


def test_a_file_that_cannot_be_opened_drops_everything_and_holds_nothing(tmp_path: Path) -> None:
    sink = TraceSink(tmp_path, max_queued=100)  # a directory: opening it for writing fails
    add_events(sink, 20_000)
    assert sink.pending <= 100 and sink.dropped >= 20_000 - 100
    sink.close()
    assert sink.written == 0
