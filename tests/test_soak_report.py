"""The soak tool's pure parts: line plans, the script mix, the frame ledger, fault exposure and the leak check."""

from __future__ import annotations

from typing import Any

import pytest

from engine.telephony import reject_twiml
from procs.webhooks import BUSY_LINE
from tools.caller import TurnedAway, parse_twiml
from tools.soak import parse_mix, plan_lines
from tools.soak_calls import frames_expected
from tools.soak_report import classify, exposure, frames_table, leaks, ledger, summarize, table


def record(**over: Any) -> dict[str, Any]:
    base = {"script": "question", "call_sid": "CA1", "t_dial": 10.0, "t_end": 20.0, "outcome": "ok",
            "reason": "hung up", "voice_to_voice_ms": [900.0], "barge_in_ms": [], "dtmf_reply_ms": [],
            "frames_sent": 500, "sent_runs": [[0, 500]], "media_received": 100, "underruns": 0,
            "underrun_ms": 0.0, "duplicate_marks": 0, "sent_late": 0, "max_send_lag_ms": 3.0}
    return {**base, **over}


def summary(**over: Any) -> dict[str, Any]:
    base = {"call_id": "CA1", "frames_in": 500, "last_timestamp_ms": 499 * 20, "inbound_dropped": 0,
            "inbound_late": 0, "seq_out_of_order": 0, "frames_out": 100, "outbound_gaps": 0}
    return {**base, **over}


def snap(**over: Any) -> dict[str, Any]:
    base = {"shm_segments": ["soak1-2-pool"], "processes": 6, "zombies": 0, "fds": {"transport": 49, "llm": 71},
            "runtime_dirs": ["soak1-2"], "own_fds": 10}
    return {**base, **over}


def test_steady_lines_start_within_seconds_ramp_spreads_them_spike_bursts_in_the_middle() -> None:
    steady = plan_lines("steady", 8, 60, seed=1)
    assert all(ln["start"] <= 5 and ln["end"] == 60 for ln in steady)
    ramp = plan_lines("ramp", 4, 60, seed=1)
    assert [ln["start"] for ln in ramp] == [0, 7.5, 15, 22.5]
    spike = plan_lines("spike", 8, 60, seed=1)
    assert sum(1 for ln in spike if ln["end"] == 60) == 2
    assert all(20 <= ln["start"] < 21 and ln["end"] == 40 for ln in spike if ln["end"] != 60)
    assert len({ln["seed"] for ln in spike}) == 8
    with pytest.raises(ValueError, match="unknown profile"):
        plan_lines("wave", 2, 10, seed=1)


def test_the_mix_names_known_scripts_with_weights() -> None:
    assert parse_mix("question=3, listen") == {"question": 3.0, "listen": 1.0}
    for bad, why in (("sing=1", "unknown script"), ("question=x", "not a number"), ("question=0", "positive")):
        with pytest.raises(ValueError, match=why):
            parse_mix(bad)


def test_frames_expected_stop_at_the_last_frame_the_engine_took_in() -> None:
    runs = [[0, 100], [5000, 50]]  # 100 frames, a pause, 50 more
    assert frames_expected(runs, None) == 0
    assert frames_expected(runs, 99 * 20) == 100
    assert frames_expected(runs, 3000) == 100
    assert frames_expected(runs, 5000 + 9 * 20) == 110
    assert frames_expected(runs, 10**9) == 150


def test_the_ledger_counts_missing_and_refused_inbound_frames_and_outbound_gaps() -> None:
    assert ledger(record(), summary())["in_lost"] == 0
    # 3 frames never arrived mid-stream, 2 could not go into the speech ring.
    row = ledger(record(), summary(frames_in=497, inbound_dropped=2, outbound_gaps=4, seq_out_of_order=1))
    assert (row["in_lost"], row["out_lost"], row["in_dup"]) == (5, 4, 1)
    # A caller that vanished cut its own tail: frames after the engine's last one are not lost.
    assert ledger(record(), summary(frames_in=400, last_timestamp_ms=399 * 20))["in_lost"] == 0
    # More media than the engine says it sent is a duplicate; no engine summary is unknown, not zero.
    assert ledger(record(media_received=103), summary())["out_dup"] == 3
    assert ledger(record(), None)["in_lost"] is None


def test_a_call_is_exposed_to_a_kill_from_the_kill_to_a_second_after_the_restart() -> None:
    kills = [{"target": "llm", "at": 5.0, "restart_s": 1.0}, {"target": "speech", "at": 25.0, "restart_s": 2.0},
             {"target": "tts", "at": 15.0, "skipped": "not ready"}]
    assert exposure(record(t_dial=6.5, t_end=9.0), kills) == ["llm"]
    assert exposure(record(t_dial=7.5, t_end=24.0), kills) == []
    assert exposure(record(t_dial=0.0, t_end=30.0), kills) == ["llm", "speech"]


def test_a_call_left_hanging_by_a_fault_is_a_failure_not_an_ending() -> None:
    kills = [{"target": "tts", "at": 5.0, "restart_s": 2.0}]
    hung = record(t_dial=4.0, t_end=60.0, outcome="timed_out", reason="timed out waiting for the answer")
    assert classify(hung, exposure(hung, kills)) == "failed"
    dropped = record(t_dial=4.0, t_end=6.0, outcome="engine_closed", reason="connection lost")
    assert classify(dropped, exposure(dropped, kills)) == "ended_by_fault"
    assert classify(record(outcome="unfinished"), []) == "failed"


def test_a_caller_turned_away_busy_is_an_outcome_and_the_load_not_sustained() -> None:
    with pytest.raises(TurnedAway, match="busy"):
        parse_twiml(reject_twiml(BUSY_LINE))  # what the engine answers when it is full
    busy = record(call_sid="CA2", t_dial=1.0, t_end=1.1, outcome="busy", reason="turned away")
    assert classify(busy, []) == "turned_away"
    stopped = snap(shm_segments=[], processes=0, runtime_dirs=[], own_fds_at_start=10)
    run = {"callers": 2, "profile": "steady", "duration_s": 60.0, "mix": "question=1", "kill": [], "kill_every_s": 0}
    report = summarize([record(call_sid="CA1"), busy], {"CA1": summary(call_id="CA1")}, [], [], snap(), snap(),
                       stopped, 0.0, run)
    assert report["calls"]["turned_away"] == 1 and report["checks"]["every_call_reached_an_outcome"]
    assert "1 callers turned away busy" in report["sustained"]["why_not"]


def test_a_stream_dropped_under_a_send_is_the_faults_ending_and_a_failure_without_one() -> None:
    kills = [{"target": "transport", "at": 5.0, "restart_s": 1.0}]
    dropped = record(t_dial=4.0, t_end=5.5, outcome="dropped", reason="StreamLost: Cannot write to closing transport")
    assert classify(dropped, exposure(dropped, kills)) == "ended_by_fault"
    assert classify(dropped, []) == "failed"


def test_leaks_are_growth_after_the_calls_and_anything_left_after_the_stop() -> None:
    stopped = snap(shm_segments=[], processes=0, runtime_dirs=[], own_fds=10, own_fds_at_start=10)
    assert leaks(snap(), snap(fds={"transport": 49, "llm": 70}), stopped) == []
    found = leaks(snap(), snap(fds={"transport": 52, "llm": 71}, zombies=1),
                  {**stopped, "shm_segments": ["soak1-2-pool"], "own_fds": 12})
    assert any("transport: 49" in f for f in found) and any("zombie" in f for f in found)
    assert any("left after the engine stopped" in f for f in found) and any("soak tool" in f for f in found)


def test_summary_judges_faulted_calls_apart_and_fails_on_loss_outside_faults() -> None:
    kills = [{"target": "llm", "at": 100.0, "restart_s": 1.0, "pid": 5, "calls_active": 1}]
    records = [record(call_sid="CA1"), record(call_sid="CA2", t_dial=99.0, t_end=110.0),
               record(call_sid="CA3", t_dial=99.0, t_end=110.0, outcome="engine_closed", reason="engine closed"),
               record(call_sid="CA4", t_dial=30.0, t_end=40.0, outcome="timed_out", reason="timed out"),
               record(call_sid="CA5", t_dial=50.0, t_end=60.0, outcome="engine_closed", reason="said goodbye")]
    ended = {sid: summary(call_id=sid) for sid in ("CA1", "CA2", "CA3")}
    ended["CA2"] = summary(call_id="CA2", frames_in=490)  # lost while only the llm was down: still a failure
    stopped = snap(shm_segments=[], processes=0, runtime_dirs=[], own_fds_at_start=10)
    run = {"callers": 2, "profile": "steady", "duration_s": 60.0, "mix": "question=1", "kill": ["llm"],
           "kill_every_s": 30.0}
    report = summarize(records, ended, kills, [], snap(), snap(), stopped, 0.0, run)
    c = report["calls"]
    assert (c["completed"], c["recovered"], c["ended_by_fault"], c["ended_by_engine"], c["failed"]) == (1, 1, 1, 1, 1)
    assert report["frames"]["inbound_lost_outside_speech_or_transport_faults"] == 10
    assert report["checks"] == {"every_call_reached_an_outcome": False,
                                "no_inbound_frame_lost_outside_speech_or_transport_faults": False,
                                "nothing_leaked": True}
    assert "timed out" in table(report) and not report["sustained"]["ok"]
    assert report["sustained"]["why_not"][0].startswith("not judged")  # faults were injected
    quiet_run = summarize(records, ended, [], [], snap(), snap(), stopped, 0.0, run)
    assert any("ended by the engine" in why for why in quiet_run["sustained"]["why_not"])


def test_stalls_say_how_far_into_the_bots_audio_they_began() -> None:
    """Stalls all at one offset point at one cause (a chunk boundary); the report says where they fall."""
    calls = [{"frames": ledger(record(underruns=2, underrun_ms=150.0, underrun_at=[[0.18, 0.1], [0.18, 0.05]]),
                               summary())},
             {"frames": ledger(record(underruns=1, underrun_ms=20.0, underrun_at=[[2.5, 0.02]]), summary())},
             {"frames": ledger(record(), summary())}]  # a record from before stalls had places
    out = frames_table(calls)["outbound"]
    assert (out["late"], out["late_ms"]) == (3, 170.0)
    assert out["late_at_s"] == {"p50": 0.18, "min": 0.18, "max": 2.5}
    assert frames_table(calls[2:])["outbound"]["late_at_s"] is None
