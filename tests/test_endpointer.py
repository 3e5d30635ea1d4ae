"""The endpointer, table-driven: speech/silence patterns in 32 ms windows -> events."""

from __future__ import annotations

import msgspec
import pytest

from engine.config import SpeechSection
from engine.endpointer import Endpoint, Endpointer, Onset, Pause, Resumed, Sustained

W = 512  # samples per window at 16 kHz = 32 ms
CFG = SpeechSection(vad_threshold=0.5, vad_hysteresis=0.15, min_speech_ms=64, pause_ms=200, end_silence_ms=500,
                    prefix_pad_ms=64, caller_pause_margin_ms=0)
LEARNS = msgspec.structs.replace(CFG, caller_pause_margin_ms=200, turn_incomplete_ms=1000)
NEVER = 60_000  # a barge-in minimum no test pattern reaches: keeps `Sustained` out of the patterns


def run(pattern: str, cfg: SpeechSection = CFG, barge_in_ms: int = NEVER) -> list[tuple[int, object]]:
    """`S` speech (0.9), `.` silence (0.05), `~` in between (0.45): one character per window."""
    ep = Endpointer(cfg, 16000, barge_in_ms=barge_in_ms)
    probs = {"S": 0.9, ".": 0.05, "~": 0.45}
    events = []
    for i, ch in enumerate(pattern):
        for event in ep.feed(probs[ch], i * W, W):
            events.append((i, event))
    return events


def kinds(pattern: str, cfg: SpeechSection = CFG, barge_in_ms: int = NEVER) -> list[str]:
    return [type(e).__name__ for _, e in run(pattern, cfg, barge_in_ms)]


@pytest.mark.parametrize(("pattern", "expected"), [
    ("." * 40, []),                                            # silence
    ("..S....", []),                                           # a click: one window never starts a turn
    ("..S.S.S.S.", []),                                        # line crackle: isolated windows
    ("..SS" + "." * 20, ["Onset", "Pause", "Endpoint"]),  # the shortest turn (64 ms)
    ("SSSSSSSSSS" + "." * 16, ["Onset", "Pause", "Endpoint"]),
    ("SSSSS" + "." * 10 + "SSSSS" + "." * 16,                  # a 320 ms pause inside the turn: one turn
     ["Onset", "Pause", "Resumed", "Pause", "Endpoint"]),
    ("SSSSS" + "..." + "SSSSS" + "." * 16,                     # a pause shorter than pause_ms: not even a Pause
     ["Onset", "Pause", "Endpoint"]),
    ("SS~~~~~~" + "." * 16, ["Onset", "Pause", "Endpoint"]),  # in-between keeps speech going
    ("S~" + "." * 16, ["Onset", "Pause", "Endpoint"]),        # ...and counts toward the onset
    ("SSSSS" + "." * 16 + "SSSS" + "." * 16,                   # two turns
     ["Onset", "Pause", "Endpoint", "Onset", "Pause", "Endpoint"]),
])
def test_patterns(pattern: str, expected: list[str]) -> None:
    assert kinds(pattern) == expected


def test_timing_and_ranges() -> None:
    events = run("...." + "SSSSSS" + "." * 20)
    (i0, started), (i1, pause), (i2, end) = events
    assert isinstance(started, Onset) and started.start == 4 * W
    assert i0 == 5  # fires on the second speech window: 64 ms, fast enough for barge-in
    assert isinstance(pause, Pause) and pause.end == 10 * W
    assert i1 == 10 + 6  # 7 windows of silence = 224 ms >= 200
    assert isinstance(end, Endpoint) and (end.start, end.end) == (4 * W - 1024, 10 * W)  # 64 ms prefix pad
    assert i2 == 10 + 15  # 16 windows = 512 ms >= 500
    assert not end.forced


def test_pause_then_resume_then_end_ranges_cover_the_whole_turn() -> None:
    events = run("SSSS" + "." * 8 + "SSSS" + "." * 16)
    pause, resumed, pause2, end = (e for _, e in events[1:])
    assert isinstance(resumed, Resumed)
    assert isinstance(pause, Pause) and pause.end == 4 * W
    assert isinstance(pause2, Pause) and isinstance(end, Endpoint)
    assert (pause2.start, pause2.end) == (end.start, end.end) == (0, 16 * W)  # the speculative job matches


def test_a_monologue_is_cut_at_max_turn() -> None:
    cfg = SpeechSection(min_speech_ms=64, pause_ms=200, end_silence_ms=500, max_turn_s=1.0)
    events = run("S" * 80, cfg)
    ends = [e for _, e in events if isinstance(e, Endpoint)]
    assert len(ends) == 2 and all(e.forced for e in ends)


def test_longer_min_speech_ignores_a_cough() -> None:
    cfg = SpeechSection(min_speech_ms=200)
    assert kinds("...SSS....", cfg) == []           # 96 ms cough
    assert kinds("...SSSSSSS" + "." * 20, cfg)[0] == "Onset"


def test_audio_history_is_a_window_on_the_absolute_sample_clock() -> None:
    import numpy as np

    from engine.hearing import AudioHistory

    h = AudioHistory(rate=10, seconds=3.0)  # holds 30 samples
    stream = np.arange(100, dtype=np.float32)
    for i in range(0, 100, 7):  # appends that wrap around the buffer at odd places
        h.append(stream[i:i + 7])
    assert (h.start, h.end) == (70, 100)
    assert np.array_equal(h.range(70, 100), stream[70:100])
    assert np.array_equal(h.range(85, 93), stream[85:93])
    assert np.array_equal(h.range(0, 75), stream[70:75])  # older than held: clipped
    assert len(h.range(100, 120)) == 0
    h.append(np.arange(100, 200, dtype=np.float32))  # one append longer than the buffer
    assert (h.start, h.end) == (170, 200) and np.array_equal(h.range(170, 200), np.arange(170, 200))


SUSTAIN = 320  # ms: 10 windows


@pytest.mark.parametrize(("pattern", "expected"), [
    ("SSSSSS" + "." * 16, ["Onset", "Pause", "Endpoint"]),            # "mm-hm": never sustained
    ("S" * 12 + "." * 16, ["Onset", "Sustained", "Pause", "Endpoint"]),
    ("SSSSS...SSSSS" + "." * 16, ["Onset", "Pause", "Endpoint"]),     # broken by silence: not sustained
    ("SSS" + "." * 8 + "S" * 11 + "." * 16,                                   # a longer second stretch is
     ["Onset", "Pause", "Resumed", "Sustained", "Pause", "Endpoint"]),
    ("S" * 30 + "." * 16, ["Onset", "Sustained", "Pause", "Endpoint"]),  # once per turn
])
def test_sustained_speech_is_reported_once_when_it_lasts(pattern: str, expected: list[str]) -> None:
    assert kinds(pattern, barge_in_ms=SUSTAIN) == expected


@pytest.mark.parametrize("barge_in_ms", [0, 32, 64])
def test_with_a_minimum_no_longer_than_the_onset_the_onset_itself_may_interrupt(barge_in_ms: int) -> None:
    events = run("..SS" + "." * 20, barge_in_ms=barge_in_ms)
    (i0, onset), (i1, sustained) = events[:2]
    assert isinstance(onset, Onset) and isinstance(sustained, Sustained) and i0 == i1 == 3
    assert [type(e).__name__ for _, e in events[2:]] == ["Pause", "Endpoint"]  # once a turn


def endpoints(pattern: str, cfg: SpeechSection) -> list[int]:
    """The windows at which turns ended."""
    return [i for i, e in run(pattern, cfg) if isinstance(e, Endpoint)]


def test_a_caller_who_talks_on_after_a_long_silence_gets_that_silence_and_the_margin_to_end_a_turn() -> None:
    # A 416 ms silence inside the first turn (13 windows), talked on after: later turns end at 416 + 200 ms.
    pattern = "SSSSS" + "." * 13 + "SSSSS" + "." * 40 + "SSSSS" + "." * 24
    assert endpoints(pattern, LEARNS) == [23 + 19, 68 + 19]  # 20 windows = 640 ms >= 616; 19 = 608 is not
    assert endpoints(pattern, CFG) == [23 + 15, 68 + 15]  # off: 16 windows = 512 ms >= 500


def test_speech_right_after_a_turn_ended_is_the_caller_going_on_and_lengthens_their_end_of_turn() -> None:
    # The turn ends at 512 ms of silence; the caller goes on 96 ms later: they paused 608 ms. Their next turn
    # ends at 808 ms.
    went_on = "SSSSS" + "." * 16 + "..." + "SSSSS" + "." * 30
    assert endpoints(went_on, LEARNS) == [20, 29 + 25]
    # A caller who speaks 640 ms after the turn ended is answering the bot: their end of turn stays 500 ms.
    answered = "SSSSS" + "." * 16 + "." * 20 + "SSSSS" + "." * 30
    assert endpoints(answered, LEARNS) == [20, 46 + 15]


def test_a_pause_already_judged_unfinished_teaches_nothing_and_the_learnt_silence_is_capped() -> None:
    ep = Endpointer(LEARNS, 16000, barge_in_ms=NEVER)
    t = 0

    def feed(pattern: str) -> list[object]:
        nonlocal t
        out = []
        for ch in pattern:
            out += ep.feed(0.9 if ch == "S" else 0.05, t * W, W)
            t += 1
        return out

    feed("SSSSS" + "." * 7)  # a Pause (224 ms) whose transcript ends on "for": given longer
    ep.wait_for(1000)
    assert not any(isinstance(e, Endpoint) for e in feed("." * 20 + "SSSSS"))  # went on after 864 ms
    assert ep.base_silence_ms() == 500
    feed("." * 16 + ".")  # ended at 512 ms; the caller goes on 32 ms later, after 544 ms
    feed("SSSSS")
    assert ep.base_silence_ms() == 500 + 44 + 200
    capped = Endpointer(msgspec.structs.replace(LEARNS, turn_incomplete_ms=600), 16000, barge_in_ms=NEVER)
    capped.caller_pause_ms = 900
    assert capped.base_silence_ms() == 600


def test_a_click_in_a_silence_and_a_turn_a_judgement_lengthened_teach_nothing() -> None:
    click = "SSSSS" + "." * 15 + "S" + "." * 21 + "S" + "." * 40 + "SSSSS" + "." * 16
    ep = Endpointer(LEARNS, 16000, barge_in_ms=NEVER)
    for i, ch in enumerate(click):
        ep.feed(0.9 if ch == "S" else 0.05, i * W, W)
    assert ep.caller_pause_ms == 0 and ep.base_silence_ms() == 500
    judged = Endpointer(LEARNS, 16000, barge_in_ms=NEVER)
    pattern = "SSSSS" + "." * 7 + "W" + "." * 30 + "..." + "SSSSS"  # W: the pause is judged unfinished here
    for i, ch in enumerate(pattern):
        if ch == "W":
            judged.wait_for(1000)
        judged.feed(0.9 if ch == "S" else 0.05, i * W, W)
    assert judged.caller_pause_ms == 0  # its turn ended at 1 s; talking on right after teaches nothing
