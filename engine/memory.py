"""What the engine remembers of each caller between calls: the latest turns of their heard-only dialogue.

With `memory.enabled`, when a call ends the transport keeps its dialogue as the LLM
knew it (engine.heard_history: the caller's words, and of each reply only what the
caller heard) under the caller's number, in place of what was kept before: the
latest `memory.max_turns` turns. The next call from that number starts with them
(`History`, before the greeting). So the model remembers what the caller heard,
never a reply they cut short as if they had heard it all.

Storage is one SQLite file in WAL mode (readers never wait for the writer), 0600 in
a 0700 directory. A caller's turns are deleted `memory.retention_days` after their
latest call (`prune`, at every call's end), or at once with `forget` (`python -m
engine forget NUMBER`). Calls of unknown number are never remembered. Every method
blocks on disk: the transport calls them on a worker thread.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from ipc.schema import HistoryTurn

SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    number TEXT NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0,
    call_sid TEXT NOT NULL,
    ended_at REAL NOT NULL,
    PRIMARY KEY (number, seq)
);
CREATE INDEX IF NOT EXISTS turns_ended_at ON turns (ended_at);
"""


def _private_db(path: Path) -> None:
    """The database file and its directory, made private to this user if they are not there yet."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)  # SQLite gives its -wal and -shm files the database file's permissions


class CallerMemory:
    """Each caller's latest heard-only turns, by number, in SQLite."""

    def __init__(self, path: Path, max_turns: int, retention_days: float) -> None:
        self.path = path.expanduser()
        self.max_turns = max_turns
        self.retention_s = retention_days * 86400
        _private_db(self.path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def recall(self, number: str, now: float | None = None) -> list[HistoryTurn]:
        """The turns kept for `number` (none for an unknown number, or once they are past retention). A caller's
        words the call ended on, unanswered, are left out: the next call's first words would join them."""
        if not number:
            return []
        cutoff = (time.time() if now is None else now) - self.retention_s
        with self._lock:
            rows = self._db.execute("SELECT role, text, interrupted FROM turns WHERE number = ? AND ended_at > ? "
                                    "ORDER BY seq", (number, cutoff)).fetchall()
        turns = [HistoryTurn(role=role, text=text, interrupted=bool(interrupted)) for role, text, interrupted in rows]
        while turns and turns[-1].role == "user":
            turns.pop()
        return turns

    def remember(self, number: str, call_sid: str, turns: list[HistoryTurn], now: float | None = None) -> int:
        """`number`'s call `call_sid` ended with this dialogue (what it began with included): its latest
        `max_turns` turns replace what was kept. Returns how many were kept (none said: nothing changes)."""
        kept = [t for t in turns if t.text.strip()][-self.max_turns:]
        if not (number and kept):  # a call with nothing said (a hang-up at once, a voicemail) leaves memory be
            return 0
        ended_at = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM turns WHERE number = ?", (number,))
                self._db.executemany(
                    "INSERT INTO turns (number, seq, role, text, interrupted, call_sid, ended_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(number, i, t.role, t.text, int(t.interrupted), call_sid, ended_at) for i, t in enumerate(kept)])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(kept)

    def forget(self, number: str) -> int:
        """Delete everything kept for `number`; returns how many turns that was."""
        with self._lock:
            return self._db.execute("DELETE FROM turns WHERE number = ?", (number,)).rowcount

    def prune(self, now: float | None = None) -> int:
        """Delete the turns of callers whose latest call ended longer ago than retention; how many turns."""
        cutoff = (time.time() if now is None else now) - self.retention_s
        with self._lock:
            return self._db.execute("DELETE FROM turns WHERE ended_at <= ?", (cutoff,)).rowcount

    def numbers(self) -> int:
        """How many callers are remembered."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(DISTINCT number) FROM turns").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
