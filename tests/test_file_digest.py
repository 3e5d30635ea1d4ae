"""A model file's hash is computed once per version of the file (engine/file_digest.py)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from engine.file_digest import file_digest


def _records(cache: Path) -> list[Path]:
    return sorted((cache / "digests").glob("*.json"))


def test_the_digest_is_the_files_sha256_and_is_read_back_while_the_file_is_unchanged(tmp_path: Path) -> None:
    model, cache = tmp_path / "model.bin", tmp_path / "cache"
    model.write_bytes(b"weights" * 1000)
    assert file_digest(model, cache) == hashlib.sha256(model.read_bytes()).hexdigest()
    [record] = _records(cache)
    kept = json.loads(record.read_text())
    record.write_text(json.dumps({**kept, "sha256": "kept"}))
    assert file_digest(model, cache) == "kept"  # taken from the record: the file was not read again


def test_a_changed_file_is_hashed_again(tmp_path: Path) -> None:
    model, cache = tmp_path / "model.bin", tmp_path / "cache"
    model.write_bytes(b"old weights")
    first = file_digest(model, cache)
    stat = model.stat()
    model.write_bytes(b"new weights")  # same size
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert file_digest(model, cache) == hashlib.sha256(b"new weights").hexdigest() != first
    assert len(_records(cache)) == 1


def test_an_unreadable_record_is_replaced(tmp_path: Path) -> None:
    model, cache = tmp_path / "model.bin", tmp_path / "cache"
    model.write_bytes(b"weights")
    file_digest(model, cache)
    [record] = _records(cache)
    for broken in ("{not json", "[]", json.dumps({"stamp": "x"})):
        record.write_text(broken)
        assert file_digest(model, cache) == hashlib.sha256(b"weights").hexdigest()
    assert json.loads(record.read_text())["sha256"] == hashlib.sha256(b"weights").hexdigest()
