"""The whole engine under its supervisor hears a synthetic caller: one utterance, one transcript."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np

from tests.speech_helpers import silence, spoken, words
from tools.caller import SyntheticCaller
from tools.engine_run import EngineRun

AUTH = "engine-test-auth-token"
PUBLIC = "https://voice.example.test"


def test_a_callers_utterance_becomes_one_transcript(tmp_path: Path) -> None:
    recordings = tmp_path / "recordings"
    run = EngineRun(tmp_path, ENGINE_TRANSPORT__PUBLIC_URL=PUBLIC, ENGINE_TWILIO__AUTH_TOKEN=AUTH,
                    ENGINE_TRANSPORT__RECORDINGS_DIR=str(recordings))
    try:
        run.wait_healthy(timeout=120)
        utterance = np.concatenate([silence(0.5), spoken("I would like to cancel my order and get a refund."),
                                    silence(1.5)])

        async def call() -> str:
            async with SyntheticCaller(f"http://127.0.0.1:{run.port}", public_url=PUBLIC, auth_token=AUTH) as c:
                await c.connect(await c.dial())
                await c.send_audio(utterance)
                events = recordings / c.call_sid / "events.jsonl"
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and '"Transcript"' not in (
                        events.read_text() if events.exists() else ""):
                    await asyncio.sleep(0.1)
                await c.send_audio(silence(1.0))  # nothing more is said
                await c.hangup()
                return c.call_sid

        call_sid = asyncio.run(call())
        health = run.health()
        assert health is not None and health[1]["transport"]["inbound_wakeups"] > 0  # a call alone: heard per frame
        time.sleep(0.5)  # the recorder flushes within a second of the call ending
        events = [json.loads(line) for line in (recordings / call_sid / "events.jsonl").read_text().splitlines()]
        transcripts = [e for e in events if e["event"] == "Transcript" and e["final"]]
        assert len(transcripts) == 1, events
        assert [e["event"] for e in events].count("SpeechStarted") == 1
        text = transcripts[0]["text"]
        assert len({"cancel", "order", "refund"} & words(text)) >= 2, text
        assert transcripts[0]["turn"] == 1
        provisional = [e for e in events if e["event"] == "Transcript" and not e["final"]]
        assert [e["text"] for e in provisional] in ([], [text])  # made at the pause, if it was ready before the end
        assert run.stop() == 0
    finally:
        run.kill_everything()


def test_calls_heard_together_share_one_vad_inference_a_tick_and_their_frames_wake_no_one(tmp_path: Path) -> None:
    """Two callers on the line at once, their frames arriving out of step: the speech process, waking on its own
    `speech.vad_tick_ms`, runs VAD for both calls' windows at once (woken frame by frame, it would run each call's
    windows on a wake-up of their own: each such first inference runs with cold caches, ~4x the cost of a warm one),
    and while both are live the transport's frame writes never wake it."""
    run = EngineRun(tmp_path, ENGINE_TRANSPORT__PUBLIC_URL=PUBLIC, ENGINE_TWILIO__AUTH_TOKEN=AUTH,
                    ENGINE_CONVERSATION__GREETING="")
    try:
        before = run.wait_healthy(timeout=120)["processes"]["speech"]["stats"]

        connected, spoken = asyncio.Barrier(3), asyncio.Barrier(3)
        wakeups: list[int] = []

        async def caller(delay: float) -> None:
            await asyncio.sleep(delay)
            async with SyntheticCaller(f"http://127.0.0.1:{run.port}", public_url=PUBLIC, auth_token=AUTH) as c:
                await c.connect(await c.dial())  # not a continuous line: frames go only while it speaks
                await connected.wait()
                await c.send_silence(3.0)
                await spoken.wait()
                await c.hangup()

        async def transport_wakeups() -> int:
            await asyncio.sleep(0.3)  # the speech process hears of both calls
            health = await asyncio.to_thread(run.health)
            assert health is not None
            return int(health[1]["transport"]["inbound_wakeups"])

        async def both() -> None:
            callers = asyncio.gather(caller(0.0), caller(0.01))
            await connected.wait()
            wakeups.append(await transport_wakeups())
            await spoken.wait()
            wakeups.append(await transport_wakeups())
            await callers

        asyncio.run(both())
        # The speech process's counts once its heartbeat says both calls are over.
        body = run.wait_healthy(timeout=10, unless=lambda b: b["processes"]["speech"]["stats"]["calls"] > 0
                                or b["calls_active"] > 0)
        after = body["processes"]["speech"]["stats"]
        windows = after["vad_windows"] - before["vad_windows"]
        passes = after["vad_passes"] - before["vad_passes"]
        assert windows >= 2 * 2.5 * 16000 / 512, (windows, passes)  # both calls' 3 s were heard
        assert windows / passes >= 1.5, (windows, passes)
        assert wakeups[1] == wakeups[0]  # while both spoke, no frame woke the speech process
        assert run.stop() == 0
    finally:
        run.kill_everything()
