"""A model file's content hash, computed once per version of the file rather than at every process start.

Files made from a model (its Q4_0 copy, Piper's split graphs) are kept in the model cache under the source
file's SHA-256, so a changed source never reuses a stale copy. Hashing the source at every start cost the llm
process 110-400 ms (SmolLM2's 98 MB; page cache warm or not) and the tts process 80-210 ms (Piper's 63 MB voice),
on every restart too, while calls wait for them. So the digest is kept beside the cache with the file's size,
mtime and inode, as `make` and pip's caches trust them, and hashed again only when one of those changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def file_digest(path: Path, cache_dir: Path) -> str:
    """The SHA-256 (hex) of `path`'s bytes; remembered in `cache_dir` while the file's size, mtime and inode stay."""
    record = cache_dir / "digests" / (hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24] + ".json")
    stamp = _stamp(path)
    try:
        kept = json.loads(record.read_text())
        if kept.get("stamp") == stamp and isinstance(kept.get("sha256"), str):
            return str(kept["sha256"])
    except (OSError, ValueError, AttributeError):
        pass  # none yet, or unreadable: hash it
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if _stamp(path) == stamp:  # not changed while it was read
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}-{os.getpid()}")
        tmp.write_text(json.dumps({"path": str(path), "stamp": stamp, "sha256": digest.hexdigest()}))
        os.replace(tmp, record)  # atomic: a process starting beside this one reads all of it or none
    return digest.hexdigest()
