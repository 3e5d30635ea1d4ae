"""Whole phone calls against the real engine on its CPU models: greeting, answers, barge-in, keys, hang-up, idle.

One engine serves every test in this module (start-up loads Whisper, SmolLM2 and
Piper); each test is its own synthetic call. The caller speaks with Piper's voice
and the engine's answers are transcribed back with Whisper tiny.en.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.stt import WhisperTranscriber, resolve_model
from engine.trace import read_events
from tests.speech_helpers import phone_path, words
from tools.caller import SyntheticCaller, piper_speech
from tools.engine_run import EngineRun, serve

AUTH = "engine-test-auth-token"
PUBLIC = "https://voice.example.test"
GREETING = "Hello, this is the test line."
REPROMPT = "Are you still there?"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineRun]:
    tmp = tmp_path_factory.mktemp("conversation")
    run = EngineRun(tmp, ENGINE_TRANSPORT__PUBLIC_URL=PUBLIC, ENGINE_TWILIO__AUTH_TOKEN=AUTH,
                    ENGINE_TRANSPORT__RECORDINGS_DIR=str(tmp / "recordings"),
                    ENGINE_ENGINE__TRACE_FILE=str(tmp / "trace.jsonl"),
                    ENGINE_LLM__TEMPERATURE="0", ENGINE_LLM__MAX_TOKENS="160",
                    ENGINE_CONVERSATION__GREETING=GREETING, ENGINE_CONVERSATION__REPROMPT=REPROMPT,
                    ENGINE_CONVERSATION__IDLE_REPROMPT_S="4", ENGINE_CONVERSATION__MAX_REPROMPTS="1")
    yield from serve(run)


@pytest.fixture(scope="module")
def whisper() -> WhisperTranscriber:
    return WhisperTranscriber(resolve_model("tiny.en", Path("~/.cache/voice-engine").expanduser()), "cpu", "int8", 2)


def recordings(engine: EngineRun) -> Path:
    return engine.log_path.parent / "recordings"


def call_events(engine: EngineRun, call_sid: str) -> list[dict[str, Any]]:
    path = recordings(engine) / call_sid / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def wait_event(engine: EngineRun, c: SyntheticCaller, pred: Any, timeout: float, what: str) -> dict[str, Any]:
    """The first recorded engine event of this call matching `pred` (the recorder flushes every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in call_events(engine, c.call_sid):
            if pred(event):
                return event
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s; events: {call_events(engine, c.call_sid)}")


def caller(engine: EngineRun) -> SyntheticCaller:
    return SyntheticCaller(f"http://127.0.0.1:{engine.port}", public_url=PUBLIC, auth_token=AUTH)


async def talk(c: SyntheticCaller, text: str) -> None:
    """Say `text` in Piper's voice; the line carries silence before and after, as a phone line does."""
    await c.send_audio(piper_speech(text, rate=8000))


async def dial(c: SyntheticCaller) -> None:
    await c.connect(await c.dial(), continuous=True)


async def dial_past_greeting(c: SyntheticCaller) -> None:
    """Call, and return once the greeting (one sentence: one mark) has played to its end."""
    await dial(c)
    await c.wait_for_marks(1, 20)
    await c.wait_until(lambda: c.playback.idle, 5, "the greeting to finish")


def heard_text(whisper: WhisperTranscriber, pcm8k: np.ndarray) -> str:
    return whisper.transcribe(phone_path(pcm8k).astype(np.float32) / 32768)


def test_the_caller_is_greeted_then_asks_and_hears_a_relevant_answer(engine: EngineRun,
                                                                      whisper: WhisperTranscriber) -> None:
    async def scenario() -> tuple[str, str]:
        async with caller(engine) as c:
            await dial_past_greeting(c)
            greeting = heard_text(whisper, c.heard_audio())
            before = len(c.heard)
            await talk(c, "What is the capital of France?")
            await wait_event(engine, c, lambda e: e["event"] == "note" and e["what"] == "reply played"
                             and e["gen"] == 2, 40, "the answer to play")
            await c.wait_until(lambda: c.playback.idle, 5, "the answer to finish")
            answer = heard_text(whisper, np.concatenate([a for _, a in c.heard[before:]]))
            await c.hangup()
            return greeting, answer

    greeting, answer = asyncio.run(scenario())
    assert len({"hello", "test", "line"} & words(greeting)) >= 2, greeting
    # Related, as transcribed back by tiny.en (which has heard "Paris" in Piper's voice as "peris").
    assert len({"paris", "peris", "france", "capital", "french", "city"} & words(answer)) >= 2, answer


def test_the_greeting_is_made_once_and_every_caller_hears_the_same_audio(engine: EngineRun) -> None:
    """The greeting is the same words on every call: the TTS keeps its audio once made (tts.line_cache_mb), so
    later calls cost no synthesis. Made afresh, Piper's noise would make each call's copy differ."""
    async def greeted() -> np.ndarray:
        async with caller(engine) as c:
            await dial_past_greeting(c)
            audio = c.heard_audio()
            await c.hangup()
            return audio

    def line_hits() -> int:
        h = engine.health()
        assert h is not None
        return int(h[1]["processes"]["tts"]["stats"]["line_hits"])

    made = asyncio.run(greeted())  # the first call since start-up may make it
    hits = line_hits()
    first, second = asyncio.run(greeted()), asyncio.run(greeted())
    deadline = time.monotonic() + 3  # the TTS's heartbeat carries its stats every 0.2 s
    while line_hits() < hits + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert line_hits() >= hits + 2
    assert len(made) > 8000 and np.array_equal(made, first) and np.array_equal(first, second)


def test_interrupting_the_bot_silences_it_and_only_heard_words_are_kept(engine: EngineRun) -> None:
    async def scenario() -> tuple[SyntheticCaller, list[dict[str, Any]], float]:
        async with caller(engine) as c:
            await dial_past_greeting(c)
            await talk(c, "Tell me a long story about a brave knight and a dragon.")
            start = c.heard_seconds
            await c.wait_heard(start + 2.5, 40)  # well into the story
            spoke_at = time.monotonic()
            await talk(c, "Stop, stop. What is two plus two?")
            await wait_event(engine, c, lambda e: e["event"] == "respond" and e["gen"] == 3, 30, "the next turn")
            await c.hangup()
            return c, call_events(engine, c.call_sid), spoke_at

    c, events, spoke_at = asyncio.run(scenario())
    assert c.clears, "the engine never sent clear"
    clear_at = c.clears[0]
    assert clear_at > spoke_at
    # After the clear, nothing more of the story reached the caller: its later media would be logged here.
    story_media_after = [t for t, _ in c.received_media_times if clear_at < t < clear_at + 1.0]
    assert story_media_after == [], story_media_after
    heard = [e for e in events if e["event"] == "heard" and e["gen"] == 2]
    assert len(heard) == 1, events
    spans = sorted((e for e in events if e["event"] == "Spoken" and e["gen"] == 2), key=lambda e: e["index"])
    marked = {name for name, t in c.marks_echoed if t < clear_at}
    played_spans = [s["text"] for s in spans if str(s["seq_last"]) in marked]
    told = heard[0]["text"].split()
    whole = " ".join(played_spans).split()
    full_reply = " ".join(s["text"] for s in spans).split()
    # The LLM is told every sentence whose mark came back before the clear, then part of the next one at most.
    assert told[:len(whole)] == whole, (told, whole)
    assert len(told) < len(full_reply) or not full_reply, (told, full_reply)
    assert len(told) >= 3, told  # 2.5 s of story were heard


def test_keypad_digits_reach_the_llm_as_caller_input(engine: EngineRun) -> None:
    async def scenario() -> dict[str, Any]:
        async with caller(engine) as c:
            await dial(c)
            await c.wait_for_marks(1, 20)
            for digit in "42#":
                await c.send_dtmf(digit)
            event = await wait_event(engine, c, lambda e: e["event"] == "respond" and e["gen"] == 2, 10, "a reply")
            await c.wait_until(lambda: len(c.marks_echoed) >= 2, 40, "the reply's audio")
            await c.hangup()
            return event

    assert asyncio.run(scenario())["caller_text"] == "[pressed on the keypad: 4 2]"


def test_hanging_up_mid_answer_stops_the_engine_at_once(engine: EngineRun) -> None:
    async def scenario() -> str:
        async with caller(engine) as c:
            await dial_past_greeting(c)
            await talk(c, "Tell me a long story about the sea.")
            await c.wait_heard(c.heard_seconds + 1.0, 40)
            await c.hangup()
            return c.call_sid

    asyncio.run(scenario())

    def tts_frames() -> int:
        h = engine.health()
        assert h is not None
        return int(h[1]["processes"]["tts"]["stats"].get("frames_out", 0))

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        h = engine.health()
        if h is not None and not h[1]["transport"]["calls"] and \
                all(p["stats"].get("calls", 0) == 0 for p in h[1]["processes"].values()):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the call was not forgotten everywhere: {engine.health()}")
    before = tts_frames()
    time.sleep(1.5)  # heartbeats every 0.2 s: a TTS still speaking the story would show here
    assert tts_frames() == before


def test_an_idle_caller_is_reprompted_then_hung_up_on(engine: EngineRun) -> None:
    async def scenario() -> SyntheticCaller:
        async with caller(engine) as c:
            await dial(c)
            await c.wait_closed(40)
            return c

    c = asyncio.run(scenario())
    deadline = time.monotonic() + 5  # the recorder flushes every second
    events = call_events(engine, c.call_sid)
    while not any(e["event"] == "end" for e in events) and time.monotonic() < deadline:
        time.sleep(0.2)
        events = call_events(engine, c.call_sid)
    said = [e["say"] for e in events if e["event"] == "respond"]
    assert said[:2] == [GREETING, REPROMPT] and len(said) == 3, said  # greeting, re-prompt, goodbye
    assert c.close_code == 1000
    assert any(e["event"] == "end" and "engine hung up" in e["outcome"] for e in events), events


def test_a_tts_crash_mid_answer_gets_an_apology_and_the_call_goes_on(engine: EngineRun) -> None:
    h = engine.health()
    assert h is not None
    tts_pid = h[1]["processes"]["tts"]["pid"]

    async def scenario() -> list[dict[str, Any]]:
        async with caller(engine) as c:
            await dial_past_greeting(c)
            await talk(c, "Tell me a long story about a lighthouse keeper.")
            await c.wait_heard(c.heard_seconds + 1.0, 40)
            os.kill(tts_pid, signal.SIGKILL)
            apology = await wait_event(engine, c, lambda e: e["event"] == "speak", 20, "an apology")
            heard_before = c.heard_seconds
            await c.wait_heard(heard_before + 1.0, 20)  # the restarted TTS speaks it
            await c.wait_until(lambda: c.playback.idle, 10, "the apology to finish")
            assert not c.closed
            await talk(c, "What is the capital of France?")  # and the call goes on
            await wait_event(engine, c, lambda e: e["event"] == "note" and e["what"] == "reply played"
                             and e["gen"] == apology["gen"] + 1, 40, "the next answer")
            await c.hangup()
            return call_events(engine, c.call_sid)

    events = asyncio.run(scenario())
    notes = [e["what"] for e in events if e["event"] == "note"]
    assert "tts restarted mid-reply" in notes, notes
    assert any(e["event"] == "heard" and e["gen"] == 2 for e in events)


def test_the_trace_has_every_stage_of_an_answer(engine: EngineRun) -> None:
    """Its own call (an answer, then a barge-in over the next one), so it needs no other test to have run."""
    trace = engine.log_path.parent / "trace.jsonl"
    full = {"speech_end", "end_of_turn", "stt_start", "transcript", "reply_requested", "llm_start", "llm_first_token",
            "llm_first_sentence", "tts_start", "tts_first_audio", "first_audio_out"}

    def stages(call: str) -> dict[int, set[str]]:
        by_reply: dict[int, set[str]] = {}
        for e in read_events(trace) if trace.exists() else []:
            if e.call == call:
                by_reply.setdefault(e.gen, set()).add(e.stage)
        return by_reply

    def traced(call: str) -> bool:
        replies = stages(call).values()
        return any(full <= s for s in replies) and any({"speech_onset", "clear_sent"} <= s for s in replies)

    async def scenario() -> str:
        async with caller(engine) as c:
            await dial_past_greeting(c)
            await talk(c, "Tell me a long story about a brave knight and a dragon.")
            await c.wait_heard(c.heard_seconds + 1.5, 40)
            await talk(c, "Stop, stop. What is two plus two?")
            await wait_event(engine, c, lambda e: e["event"] == "respond" and e["gen"] == 3, 30, "the next turn")
            deadline = time.monotonic() + 10  # the trace is written by three processes, each on its own thread
            while not traced(c.call_sid) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await c.hangup()
            return c.call_sid

    by_reply = stages(asyncio.run(scenario()))
    answered = [s for s in by_reply.values() if "speech_end" in s]
    assert any(full <= s for s in answered), by_reply
    assert any({"speech_onset", "clear_sent"} <= s for s in by_reply.values()), by_reply
    # The trace tool reads it: a waterfall, percentiles, and a Perfetto file.
    out = subprocess.run([sys.executable, "-m", "engine", "trace", str(trace), "--perfetto", str(trace) + ".pf.json"],
                         capture_output=True, text=True, check=True).stdout
    assert "voice-to-voice" in out and "llm_first_token" in out, out
    assert json.loads(Path(str(trace) + ".pf.json").read_text())["traceEvents"]


def test_health_reports_the_load_admission_decides_on(engine: EngineRun) -> None:
    # Every reply that answered the caller and sounded is one response time (speech end -> first audio out).
    sounded = {(e.call, e.gen) for e in read_events(engine.log_path.parent / "trace.jsonl")
               if e.stage == "first_audio_out"}
    answering = {(e.call, e.gen) for e in read_events(engine.log_path.parent / "trace.jsonl")
                 if e.stage == "speech_end"}
    health = engine.health()
    assert health is not None
    admission = health[1]["admission"]
    assert admission["replies_total"] == len(sounded & answering) > 0, admission
    assert admission["admitting"] and admission["limit"] == admission["max_calls"], admission  # one call at a time
    assert admission["host_cpu_pct"] is not None and 0 <= admission["host_cpu_pct"] <= 100
