"""The trace tool on a hand-made trace: segments, percentiles, overhead, waterfall, Perfetto export, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.trace import TraceSink, read_events
from engine.trace_report import perfetto, replies, report, summarize
from tools.cli import main

MS = 1_000_000
# One answered reply: stage -> ms after the caller stopped speaking.
ANSWER = {"speech_end": 0, "end_of_turn": 500, "transcript": 520, "reply_requested": 521, "llm_start": 523,
          "llm_first_token": 580, "llm_first_sentence": 650, "tts_start": 652, "tts_first_audio": 790,
          "first_audio_out": 800}


def write_trace(path: Path, calls: int = 3) -> None:
    sink = TraceSink(path)
    for i in range(calls):
        base = (i + 1) * 10_000 * MS
        for stage, ms in ANSWER.items():
            sink.add(f"CA{i}", 2, stage, base + (ms + i * 10) * MS)  # each call 10 ms slower than the last
        for stage, ms in (("speech_onset", 2000), ("barge_in_heard", 2090), ("clear_sent", 2091)):
            sink.add(f"CA{i}", 2, stage, base + ms * MS)
        sink.add(f"CA{i}", 1, "reply_requested", base - 5000 * MS)  # a greeting: not an answer
    sink.close()


def test_segments_totals_and_overhead(tmp_path: Path) -> None:
    write_trace(tmp_path / "t.jsonl")
    found = replies(read_events(tmp_path / "t.jsonl"))
    s = summarize(found)
    assert (s["replies"], s["answered"], s["barge_ins"]) == (6, 3, 3)
    assert s["segments"]["llm_start->llm_first_token"]["p50"] == pytest.approx(57)
    assert s["totals"]["speech_end->first_audio_out"]["p50"] == pytest.approx(800)  # offsets shift together
    assert s["totals"]["speech_onset->clear_sent"]["p50"] == pytest.approx(91)
    # Engine-owned: transcript->requested 1, requested->llm_start 2, sentence->tts_start 2, audio->out 10.
    assert s["engine_overhead_ms"]["p50"] == pytest.approx(15)
    # Model and policy: silence 500, STT 20, prefill 57, first clause 70, TTS first audio 138.
    assert s["models_and_policy_ms"]["p50"] == pytest.approx(785)


def test_report_draws_waterfalls_and_a_table(tmp_path: Path) -> None:
    write_trace(tmp_path / "t.jsonl")
    text = report(replies(read_events(tmp_path / "t.jsonl")), waterfalls=1)
    assert text.count("call CA") == 1 and "first_audio_out" in text and "engine overhead" in text


def test_perfetto_export_has_a_slice_per_segment(tmp_path: Path) -> None:
    write_trace(tmp_path / "t.jsonl", calls=1)
    slices = [e for e in perfetto(replies(read_events(tmp_path / "t.jsonl")))["traceEvents"] if e["ph"] == "X"]
    assert len(slices) == 9 + 2
    assert {e["name"] for e in slices} >= {"llm_start->llm_first_token", "barge_in_heard->clear_sent"}


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    write_trace(tmp_path / "t.jsonl", calls=1)
    with open(tmp_path / "t.jsonl", "a") as f:
        f.write('{"call": "CA9", "gen": 1, "sta')
    assert len(read_events(tmp_path / "t.jsonl")) == len(ANSWER) + 4


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_trace(tmp_path / "t.jsonl")
    assert main(["trace", str(tmp_path / "t.jsonl"), "--perfetto", str(tmp_path / "p.json"),
                 "--json", str(tmp_path / "s.json")]) == 0
    assert "voice-to-voice" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["answered"] == 3
    assert json.loads((tmp_path / "p.json").read_text())["traceEvents"]
    assert main(["trace", str(tmp_path / "missing.jsonl")]) == 2


def test_replies_started_at_the_pause_are_measured_on_their_critical_path() -> None:
    from engine.trace import TraceEvent

    def reply(call: str, gen: int, stages: dict[str, int]) -> list[TraceEvent]:
        return [TraceEvent(call=call, gen=gen, stage=k, t_ns=v * MS) for k, v in stages.items()]

    chain = {"speech_end": 0, "stt_start": 150, "transcript": 260, "reply_requested": 261, "reply_provisional": 261,
             "llm_start": 262, "llm_first_token": 300, "llm_first_sentence": 420, "tts_start": 421}
    ready = {**chain, "tts_first_audio": 480, "end_of_turn": 500, "reply_committed": 502, "first_audio_out": 504}
    late = {**chain, "end_of_turn": 350, "reply_committed": 352, "tts_first_audio": 480, "first_audio_out": 485}
    thrown = {"speech_end": 0, "transcript": 260, "reply_requested": 261, "reply_provisional": 261,
              "llm_start": 262, "reply_discarded": 400}
    s = summarize(replies([*reply("CA1", 1, ready), *reply("CA1", 2, late), *reply("CA1", 3, thrown)]))
    assert s["answered"] == 2
    assert s["speculative"] == {"started": 3, "committed": 2, "thrown_away": 1, "ready_before_the_turn_ended": 1,
                                "thrown_away_ran_ms": {"n": 1, "p50": 139.0, "p95": 139.0, "p99": 139.0,
                                                       "max": 139.0}}
    # Ready before the turn ended: the wait, then commit (2 ms) and release (2 ms) are the path.
    assert s["segments"]["end_of_turn->reply_committed"]["n"] == 1
    # Ready after: the chain from the pause's transcript; nothing negative creeps in.
    assert s["segments"]["speech_end->transcript"] == {**s["segments"]["speech_end->transcript"], "n": 1, "p50": 260}
    assert s["segments"]["end_of_turn->transcript"]["n"] == 0
    # Either path's transcript splits into the pause and the wait for Whisper, then Whisper; no path adds them twice.
    assert s["segments"]["speech_end->stt_start"] == {**s["segments"]["speech_end->stt_start"], "n": 2, "p50": 150}
    assert s["segments"]["stt_start->transcript"] == {**s["segments"]["stt_start->transcript"], "n": 2, "p50": 110}
    assert s["engine_overhead_ms"]["p50"] == pytest.approx((4 + (1 + 1 + 1 + 5)) / 2)
    assert s["totals"]["speech_end->first_audio_out"]["p50"] == pytest.approx((504 + 485) / 2)
