"""Memory across calls (engine.memory): SQLite in WAL mode, private files, the latest turns per number, retention,
and `python -m engine forget`."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from engine.memory import CallerMemory
from ipc.schema import HistoryTurn
from tools.cli import main as cli

DAY = 86400.0


def turn(role: str, text: str, interrupted: bool = False) -> HistoryTurn:
    return HistoryTurn(role=role, text=text, interrupted=interrupted)  # type: ignore[arg-type]


@pytest.fixture
def memory(tmp_path: Path) -> CallerMemory:
    m = CallerMemory(tmp_path / "mem" / "memory.sqlite3", max_turns=4, retention_days=30)
    yield m
    m.close()


def test_a_callers_latest_turns_come_back_for_that_number_only(memory: CallerMemory) -> None:
    turns = [turn("user", "Hi, I'm Alice."), turn("assistant", "Hello Alice."), turn("user", "I need a taxi."),
             turn("assistant", "Where to"), turn("user", "The airport."), turn("assistant", "Booked.")]
    assert memory.remember("+15550001111", "CA1", turns, now=1000.0) == 4
    assert memory.recall("+15550001111", now=1000.0 + DAY) == turns[2:]  # the latest max_turns
    assert memory.recall("+15550002222", now=1000.0) == [] and memory.recall("", now=1000.0) == []
    assert memory.numbers() == 1


def test_a_cut_reply_stays_cut_and_a_trailing_caller_turn_is_left_out(memory: CallerMemory) -> None:
    turns = [turn("user", "Tell me a story."), turn("assistant", "Once upon a", interrupted=True),
             turn("user", "Actually, never mind.")]
    memory.remember("+15550001111", "CA1", turns, now=1000.0)
    assert memory.recall("+15550001111", now=1000.0) == turns[:2]


def test_the_next_call_replaces_what_was_kept(memory: CallerMemory) -> None:
    memory.remember("+15550001111", "CA1", [turn("user", "one"), turn("assistant", "1")], now=1000.0)
    memory.remember("+15550001111", "CA2", [turn("user", "one"), turn("assistant", "1"), turn("user", "two"),
                                            turn("assistant", "2")], now=2000.0)
    assert [t.text for t in memory.recall("+15550001111", now=2000.0)] == ["one", "1", "two", "2"]


def test_a_call_with_nothing_said_leaves_memory_be(memory: CallerMemory) -> None:
    memory.remember("+15550001111", "CA1", [turn("user", "a"), turn("assistant", "b")], now=1000.0)
    assert memory.remember("+15550001111", "CA2", [], now=2000.0) == 0
    assert [t.text for t in memory.recall("+15550001111", now=2000.0)] == ["a", "b"]


def test_retention_and_forget(memory: CallerMemory) -> None:
    memory.remember("+15550001111", "CA1", [turn("user", "a"), turn("assistant", "b")], now=1000.0)
    memory.remember("+15550002222", "CA2", [turn("user", "c"), turn("assistant", "d")], now=1000.0 + 20 * DAY)
    assert memory.recall("+15550001111", now=1000.0 + 31 * DAY) == []  # past retention: never given back
    assert memory.prune(now=1000.0 + 31 * DAY) == 2 and memory.numbers() == 1
    assert memory.forget("+15550002222") == 2 and memory.numbers() == 0


def test_the_database_is_private_and_in_wal_mode(memory: CallerMemory) -> None:
    memory.remember("+15550001111", "CA1", [turn("user", "a"), turn("assistant", "b")])
    path = memory.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_forget_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "memory.sqlite3"
    monkeypatch.setenv("ENGINE_MEMORY__PATH", str(path))
    assert cli(["forget", "+15550001111"]) == 0 and "nothing is remembered" in capsys.readouterr().out
    assert not path.exists()  # asking to forget creates nothing
    m = CallerMemory(path, 12, 30)
    m.remember("+15550001111", "CA1", [turn("user", "a"), turn("assistant", "b")])
    m.close()
    assert cli(["forget", "+15550001111"]) == 0 and "2 turns deleted" in capsys.readouterr().out
    assert cli(["forget", "5550001111"]) == 2 and "E.164" in capsys.readouterr().err
    m = CallerMemory(path, 12, 30)
    assert m.recall("+15550001111") == []
    m.close()
