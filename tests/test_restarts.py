"""Children SIGKILLed in the middle of a call, against the real engine: the call loses neither what the caller
said nor what the bot said, and nothing the dead child started outlives it.

One engine serves the module: Whisper, Silero and Piper as ever, the echo backend for the LLM (it says back the
dialogue it was given, so a reply shows what the LLM knew), and 16-slot rings (0.32 s of caller audio: shorter
than any restart of the speech process, which reloads its models).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tools.caller import SyntheticCaller, piper_speech
from tools.engine_run import EngineRun, serve

AUTH = "engine-test-auth-token"
PUBLIC = "https://voice.example.test"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineRun]:
    tmp = tmp_path_factory.mktemp("restarts")
    run = EngineRun(tmp, ENGINE_TRANSPORT__PUBLIC_URL=PUBLIC, ENGINE_TWILIO__AUTH_TOKEN=AUTH,
                    ENGINE_TRANSPORT__RECORDINGS_DIR=str(tmp / "recordings"),
                    ENGINE_LLM__BACKEND="echo", ENGINE_LLM__MAX_SENTENCES="0", ENGINE_RING__SLOTS="16",
                    ENGINE_CONVERSATION__GREETING="", ENGINE_CONVERSATION__IDLE_REPROMPT_S="600")
    yield from serve(run)


def call_events(engine: EngineRun, call_sid: str) -> list[dict[str, Any]]:
    path = engine.log_path.parent / "recordings" / call_sid / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def wait_event(engine: EngineRun, call_sid: str, pred: Any, timeout: float, what: str) -> dict[str, Any]:
    """The first recorded event of the call matching `pred` (the recorder flushes every second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in call_events(engine, call_sid):
            if pred(event):
                return event
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s; events: {call_events(engine, call_sid)}")


async def restarted(engine: EngineRun, proc: str, pid: int, timeout: float = 60) -> None:
    """Until /health shows `proc` back and ready as a new process (the transport has seen it: /health is its)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = await asyncio.to_thread(engine.health)
        if h is not None and h[1]["processes"][proc]["state"] == "ready" and h[1]["processes"][proc]["pid"] != pid:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{proc} not back within {timeout} s: {engine.health()}")


def pid_of(engine: EngineRun, proc: str) -> int:
    h = engine.health()
    assert h is not None
    return int(h[1]["processes"][proc]["pid"])


def caller(engine: EngineRun) -> SyntheticCaller:
    return SyntheticCaller(f"http://127.0.0.1:{engine.port}", public_url=PUBLIC, auth_token=AUTH)


async def keys_answered(engine: EngineRun, c: SyntheticCaller, digit: str, gen: int) -> str:
    """Press `digit` then '#', and wait for reply `gen` to play to its end; what it said."""
    await c.send_dtmf(digit)
    await c.send_dtmf("#")
    await wait_event(engine, c.call_sid, lambda e: e["event"] == "note" and e["what"] == "reply played"
                     and e["gen"] == gen, 40, f"reply {gen} to play")
    spans = sorted((e for e in call_events(engine, c.call_sid) if e["event"] == "Spoken" and e["gen"] == gen),
                   key=lambda e: e["index"])
    return " ".join(e["text"] for e in spans)


def test_a_restarted_llm_goes_on_from_what_the_caller_heard(engine: EngineRun) -> None:
    async def scenario() -> tuple[str, str, list[dict[str, Any]]]:
        async with caller(engine) as c:
            await c.connect(await c.dial(), continuous=True)
            first = await keys_answered(engine, c, "1", 1)
            await keys_answered(engine, c, "2", 2)
            llm = pid_of(engine, "llm")
            os.kill(llm, signal.SIGKILL)
            await restarted(engine, "llm", llm)
            third = await keys_answered(engine, c, "3", 3)
            await c.hangup()
            return first, third, call_events(engine, c.call_sid)

    first, third, events = asyncio.run(scenario())
    assert first == "You said: (pressed on the keypad: 1)."
    # The echo backend says back the caller's last words and the last reply heard, which said back the one before:
    # the new LLM was handed the whole dialogue.
    assert third.startswith("You said: (pressed on the keypad: 3). Before that I said: You said: (pressed on the "
                            "keypad: 2)."), third
    assert "(pressed on the keypad: 1)" in third, third
    assert [e["turns"] for e in events if e["event"] == "history"] == [4]


def test_what_a_killed_child_started_dies_with_it(engine: EngineRun) -> None:
    """The supervisor ends a dead child's process group: vLLM's engine core, here a stand-in the test puts there."""
    llm = pid_of(engine, "llm")
    started = subprocess.Popen(["sleep", "600"], process_group=llm)  # as if the llm process had started it
    try:
        os.kill(llm, signal.SIGKILL)
        asyncio.run(restarted(engine, "llm", llm))
        assert started.wait(10) == -signal.SIGKILL
    finally:
        if started.poll() is None:
            started.kill()
            started.wait()


def test_a_speech_restart_mid_utterance_loses_no_caller_audio(engine: EngineRun) -> None:
    utterance = piper_speech("I would like to book a table for four people on the twelfth of March, at seven thirty "
                             "in the evening, by the window if you have one, and we will bring a birthday cake.",
                             rate=8000)

    async def scenario() -> tuple[SyntheticCaller, list[dict[str, Any]], int]:
        async with caller(engine) as c:
            await c.connect(await c.dial(), continuous=True)
            await c.send_silence(0.5)
            talking = asyncio.create_task(c.send_audio(utterance))
            sent = len(c.sent_media)
            while len(c.sent_media) < sent + 75:  # 1.5 s into the utterance
                await asyncio.sleep(0.02)
            speech = pid_of(engine, "speech")
            killed_ns = time.monotonic_ns()
            os.kill(speech, signal.SIGKILL)
            await restarted(engine, "speech", speech)
            await talking
            # The restarted process reads on from where the dead one stopped: it hears the rest of the utterance.
            await wait_event(engine, c.call_sid, lambda e: e["event"] == "Transcript" and e["final"]
                             and e["t_ns"] > killed_ns, 60, "a transcript from the restarted speech process")
            await c.hangup()
            end = await wait_event(engine, c.call_sid, lambda e: e["event"] == "end", 10, "the call's end")
            return c, call_events(engine, c.call_sid), end["frames_in"]

    c, events, frames_in = asyncio.run(scenario())
    end = next(e for e in events if e["event"] == "end")
    print(f"{frames_in} frames in, {end['inbound_spilled']} spilled while speech was down, "
          f"{end['inbound_dropped']} dropped; notes: {[e['what'] for e in events if e['event'] == 'note']}")
    assert frames_in == len(c.sent_media)  # every frame the caller sent was taken in...
    assert end["inbound_spilled"] > 0  # ...some waited while the ring was full (speech was down)...
    assert end["inbound_dropped"] == 0, end  # ...and none was lost

