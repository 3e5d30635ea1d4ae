"""Per-call recordings: private to this user, never written through a planted symlink, bounded when the disk stalls."""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import engine.recorder as recorder_module
from engine.recorder import Recorder

FRAME = bytes(320)  # 20 ms of 8 kHz PCM16


def record_call(rec: Recorder, call_id: str, frames: int = 3) -> None:
    rec.open(call_id)
    for _ in range(frames):
        rec.audio(call_id, "inbound", FRAME)
        rec.audio(call_id, "outbound", FRAME)
    rec.event(call_id, {"event": "start", "from": "+15551234567"})
    rec.close(call_id)


def wav_data_bytes(path: Path) -> int:
    return int(struct.unpack_from("<I", path.read_bytes(), 40)[0])


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: whatever the recorder makes private, it makes private itself."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_recordings_are_private_to_this_user_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    root = tmp_path / "recordings"
    rec = Recorder(root)
    record_call(rec, "CA1")
    rec.stop()
    call = root / "CA1"
    assert mode(root) == 0o700 and mode(call) == 0o700
    assert {p.name: mode(p) for p in call.iterdir()} == {"inbound.wav": 0o600, "outbound.wav": 0o600,
                                                        "events.jsonl": 0o600}
    assert wav_data_bytes(call / "inbound.wav") == 3 * len(FRAME)


def test_the_same_call_streaming_again_gets_a_new_directory(tmp_path: Path) -> None:
    rec = Recorder(tmp_path)
    record_call(rec, "CA1")
    record_call(rec, "CA1")
    rec.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CA1", "CA1-2"] and rec.errors == 0


def planting(monkeypatch: pytest.MonkeyPatch, plant: Callable[[Path], None], *, before: bool) -> None:
    """An attacker racing the recorder: `plant` runs the moment the call's directory is made (just before or just
    after), once."""
    real_mkdir = os.mkdir
    done: list[bool] = []

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        is_call = Path(path).name == "CA1" and not done
        if is_call and before:
            done.append(True)
            plant(Path(path))
        real_mkdir(path, *args, **kwargs)
        if is_call and not before:
            done.append(True)
            plant(Path(path))

    monkeypatch.setattr(os, "mkdir", mkdir)


def then_another_call(rec: Recorder, root: Path) -> None:
    """The refused call is one error; the transport goes on and the next call is recorded."""
    record_call(rec, "CA2")
    rec.stop()
    assert wav_data_bytes(root / "CA2" / "inbound.wav") == 3 * len(FRAME)


def test_a_symlink_planted_at_the_calls_directory_is_not_written_through(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    root = tmp_path / "recordings"
    root.mkdir()
    planting(monkeypatch, lambda path: path.symlink_to(victim), before=True)
    rec = Recorder(root)
    record_call(rec, "CA1")
    then_another_call(rec, root)
    assert list(victim.iterdir()) == [] and rec.errors == 1


def test_a_symlink_planted_at_a_recording_file_is_not_written_through(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    root = tmp_path / "recordings"
    root.mkdir()
    planting(monkeypatch, lambda path: (path / "inbound.wav").symlink_to(victim), before=False)
    rec = Recorder(root)
    record_call(rec, "CA1")
    then_another_call(rec, root)
    assert victim.read_text() == "precious" and rec.errors == 1


def test_a_symlink_already_at_the_calls_directory_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "CA1").symlink_to(victim)
    rec = Recorder(tmp_path)
    record_call(rec, "CA1")
    then_another_call(rec, tmp_path)
    assert list(victim.iterdir()) == [] and rec.errors == 1


def test_a_stalled_disk_drops_audio_and_events_but_not_the_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    writing, release = threading.Event(), threading.Event()
    real_write = recorder_module._WavFile.write

    def stalled_write(self: Any, pcm: bytes) -> None:
        writing.set()
        release.wait(60)  # the disk hangs until the test lets it go
        real_write(self, pcm)

    monkeypatch.setattr(recorder_module._WavFile, "write", stalled_write)
    rec = Recorder(tmp_path, max_queued_audio_bytes=10 * len(FRAME), max_queued_events=3)
    rec.open("CA1")
    rec.audio("CA1", "inbound", FRAME)
    assert writing.wait(30)  # the writer is stuck on the first frame; nothing else is queued
    with caplog.at_level(logging.WARNING, logger="engine.recorder"):
        for _ in range(100):
            rec.audio("CA1", "inbound", FRAME)  # returns at once: the caller is the event loop
        for i in range(5):
            rec.event("CA1", {"event": "mark", "n": i})
        rec.close("CA1")
    assert rec.dropped_audio_bytes == 90 * len(FRAME) and rec.dropped_events == 2
    starts = [r for r in caplog.records if "falling behind" in r.getMessage()]
    assert len(starts) == 1  # one warning for the call, not one per dropped frame
    release.set()
    rec.stop()
    assert wav_data_bytes(tmp_path / "CA1" / "inbound.wav") == 11 * len(FRAME)  # a playable file of what was kept
    events = [json.loads(line) for line in (tmp_path / "CA1" / "events.jsonl").read_text().splitlines()]
    assert [e.get("n") for e in events[:-1]] == [0, 1, 2]
    assert events[-1] == {"event": "recording_dropped", "audio_bytes": 90 * len(FRAME), "events": 2}
