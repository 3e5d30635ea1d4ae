"""The per-process call table under reordered, duplicated and replayed lifecycle messages."""

from engine.calls import CallTable


def test_end_before_start_means_the_start_is_ignored() -> None:
    table: CallTable[str] = CallTable()
    assert table.end(0, 5) is None
    assert table.start(0, 5, "CA-short", "reader") == (False, None)
    assert len(table) == 0


def test_a_late_end_never_removes_the_newer_call_on_the_same_slot() -> None:
    table: CallTable[str] = CallTable()
    table.start(0, 1, "CA1", "r1")
    accepted, displaced = table.start(0, 2, "CA2", "r2")  # CA1's end has not arrived yet
    assert accepted and displaced is not None and displaced.call_id == "CA1"
    assert table.end(0, 1) is None
    live = table.get(0)
    assert live is not None and live.call_id == "CA2"


def test_duplicates_and_replays_are_harmless() -> None:
    table: CallTable[str] = CallTable()
    assert table.start(3, 7, "CA", "a") == (True, None)
    assert table.start(3, 7, "CA", "b") == (False, None)  # replayed to us after a restart
    ended = table.end(3, 7)
    assert ended is not None and ended.state == "a"
    assert table.end(3, 7) is None
    assert table.start(3, 7, "CA", "c") == (False, None)
    assert table.find("CA") is None
