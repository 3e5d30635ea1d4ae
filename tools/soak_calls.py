"""Scripted phone calls for the soak tool: what one synthetic caller says and does, and what it measured.

Each script is a whole call through `SyntheticCaller` (signed webhook, Media Stream, a continuous line):

  question   one or two questions, each answer heard to its end (voice-to-voice per answer)
  interrupt  asks for a long story and talks over it 1.5 s in (barge-in), then hears the answer to that
  dtmf       keys 1 2 # and waits for the spoken reply
  silent     says nothing: the engine re-prompts, says goodbye and hangs up (outcome: engine closed 1000)
  midword    starts a question and hangs up (`stop`) halfway through its own sentence
  vanish     asks a question and drops the TCP connection (no `stop`, no close) while the answer plays
  listen     keeps the line open for `listen_s`, saying nothing and expecting nothing: the transport + VAD
             load of a call, without STT, LLM or TTS work (run with the greeting off)

A call's record is a plain dict (JSON between processes): its outcome, the latencies it measured, and
the frame accounting the soak report joins with the engine's own per-call summary from /health.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from engine.codec import Pcm16
from tools.caller import CallerError, StreamLost, SyntheticCaller, TurnedAway, piper_speech

SCRIPTS = ("question", "interrupt", "dtmf", "silent", "midword", "vanish", "listen")
QUESTIONS = (
    "What is the capital of France?",
    "How many days are there in a week?",
    "What color is the sky on a clear day?",
    "Can you recommend a good book to read?",
    "What is the boiling point of water?",
    "How do I make a cup of tea?",
    "What is the largest planet in our solar system?",
    "Tell me a fun fact about cats.",
)
STORY = "Tell me a long story about a brave knight and a dragon."
INTERRUPTION = "Sorry, wait a moment, I have another question."
INTERRUPT_AFTER_S = 1.5
_LATE_SEND_S = 0.04  # the caller itself sent a frame this late: its own loop was behind (load generator check)


def synthesise_voices() -> dict[str, Pcm16]:
    """Every line a script says, in Piper's voice at 8 kHz (blocking, a few seconds: do it before calling)."""
    return {text: piper_speech(text, rate=8000) for text in (*QUESTIONS, STORY, INTERRUPTION)}


@dataclass(frozen=True)
class Timeouts:
    """How long a caller waits before calling the engine broken: generous, since under load replies queue."""

    greeting_s: float = 45.0
    reply_s: float = 45.0
    talk_s: float = 90.0  # an answer still playing after this is a stuck call
    hangup_s: float = 60.0  # the silent script: re-prompts and goodbye until the engine closes
    listen_s: float = 20.0


class ScriptFailed(Exception):
    """The call could not go on as scripted: `outcome` is `engine_closed` (the engine ended it first, with a
    code: a clear outcome) or `timed_out` (the engine stopped answering: no outcome at all)."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome


class ScriptedCall:
    """One call of one script; `run()` never raises: every ending is an outcome in the record."""

    def __init__(self, c: SyntheticCaller, script: str, rng: random.Random, voices: dict[str, Pcm16],
                 timeouts: Timeouts, expect_greeting: bool) -> None:
        if script not in SCRIPTS:
            raise ValueError(f"unknown script {script!r}: one of {', '.join(SCRIPTS)}")
        self.c, self.script, self.rng, self.voices, self.to = c, script, rng, voices, timeouts
        self.expect_greeting = expect_greeting
        self.record: dict[str, Any] = {"script": script, "call_sid": c.call_sid, "voice_to_voice_ms": [],
                                       "barge_in_ms": [], "dtmf_reply_ms": [], "barge_in_missed": 0}

    async def run(self) -> dict[str, Any]:
        c, rec = self.c, self.record
        rec["t_dial"] = time.monotonic()
        try:
            try:
                target = await c.dial()
            except TurnedAway as exc:  # the engine judged itself full: an outcome, not a failure
                return self._end("busy", str(exc))
            except (OSError, CallerError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
                return self._end("refused", f"dial failed: {type(exc).__name__}: {exc}")
            await c.connect(target, continuous=True)
            rec["t_connected"] = c.started_at
            if self.expect_greeting:
                heard_at = await self._wait(c.first_media_after(0.0, self.to.greeting_s), "the greeting")
                rec["greeting_ms"] = round((heard_at - rec["t_connected"]) * 1000, 1)
                await self._wait(c.wait_quiet(1.0, self.to.talk_s), "the greeting to end")
            ending = await getattr(self, "_" + self.script)()
            return self._end("ok", ending)
        except ScriptFailed as exc:
            return self._end(exc.outcome, str(exc))
        except StreamLost as exc:  # the connection dropped before the receive side saw it close
            return self._end("dropped", f"{type(exc).__name__}: {exc}")
        except (CallerError, ConnectionError, OSError, aiohttp.ClientError) as exc:
            return self._end("engine_closed" if c.closed else "error", f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug in a script must cost one call's record, not the caller process
            return self._end("error", f"{type(exc).__name__}: {exc}")
        finally:
            await c.close()

    # --- the scripts ------------------------------------------------------------------------------
    async def _question(self) -> str:
        for question in self.rng.sample(QUESTIONS, self.rng.choice((1, 2))):
            await self._ask(question)
            await self._wait(self.c.wait_quiet(1.5, self.to.talk_s), "the answer to end")
        return await self._hangup()

    async def _interrupt(self) -> str:
        c = self.c
        await self._ask(STORY)
        heard = c.heard_seconds
        await self._wait(c.wait_until(lambda: c.heard_seconds >= heard + INTERRUPT_AFTER_S or self._bot_done(),
                                      self.to.talk_s, "the story"), "the story")
        if c.heard_seconds < heard + INTERRUPT_AFTER_S:
            return await self._hangup("the story was too short to interrupt")
        clears = len(c.clears)
        sent_before = len(c.sent_media)
        talking = asyncio.ensure_future(c.send_audio(self.voices[INTERRUPTION]))
        try:
            # The bot may finish on its own before the engine hears us (an overloaded VAD): a missed barge-in.
            await self._wait(c.wait_until(lambda: len(c.clears) > clears or self._bot_done(), self.to.reply_s,
                                          "clear"), "a clear")
        finally:
            await talking
        onset, end = c.speech_bounds(sent_before, self.voices[INTERRUPTION])
        if len(c.clears) > clears:
            self.record["barge_in_ms"].append(round((c.clears[clears] - onset) * 1000, 1))
        else:
            self.record["barge_in_missed"] += 1
        await self._wait(c.first_media_after(end, self.to.reply_s), "the answer to the interruption")
        await self._wait(c.wait_quiet(1.5, self.to.talk_s), "the answer to end")
        return await self._hangup()

    async def _dtmf(self) -> str:
        for digit in "12#":
            await self.c.send_dtmf(digit)
            await asyncio.sleep(0.15)
        pressed = time.monotonic()
        reply_at = await self._wait(self.c.first_media_after(pressed, self.to.reply_s), "the reply to the keys")
        self.record["dtmf_reply_ms"].append(round((reply_at - pressed) * 1000, 1))
        await self._wait(self.c.wait_quiet(1.5, self.to.talk_s), "the reply to end")
        return await self._hangup()

    async def _silent(self) -> str:
        await self._wait(self.c.wait_closed(self.to.hangup_s), "the engine to hang up on a silent caller")
        if self.c.close_code != 1000:
            raise ScriptFailed("engine_closed", f"the engine closed with {self.c.close_code} "
                                                f"({self.c.close_reason!r}), not 1000")
        return "the engine hung up on the silent caller"

    async def _midword(self) -> str:
        pcm = self.voices[self.rng.choice(QUESTIONS)]
        await self.c.send_audio(pcm[:len(pcm) // 2])
        return await self._hangup("hung up mid-sentence")

    async def _vanish(self) -> str:
        c = self.c
        await self._ask(self.rng.choice(QUESTIONS))
        await asyncio.sleep(0.3)
        if c.closed:
            raise ScriptFailed("engine_closed", f"the engine closed the call ({c.close_code}, {c.close_reason!r})")
        await c.vanish()
        return "vanished while the answer played"

    async def _listen(self) -> str:
        await asyncio.sleep(self.to.listen_s)
        if self.c.closed:
            raise ScriptFailed("engine_closed", f"the engine closed the call ({self.c.close_code}, "
                                                f"{self.c.close_reason!r})")
        return await self._hangup()

    # --- steps ------------------------------------------------------------------------------------
    async def _ask(self, text: str) -> None:
        c, pcm = self.c, self.voices[text]
        sent_before = len(c.sent_media)
        await c.send_audio(pcm)
        _, end = c.speech_bounds(sent_before, pcm)
        reply_at = await self._wait(c.first_media_after(end, self.to.reply_s), f"an answer to {text!r}")
        self.record["voice_to_voice_ms"].append(round((reply_at - end) * 1000, 1))

    async def _hangup(self, why: str = "hung up") -> str:
        if self.c.closed:
            raise ScriptFailed("engine_closed", f"the engine closed the call ({self.c.close_code}, "
                                                f"{self.c.close_reason!r})")
        await self.c.hangup()
        return why

    def _bot_done(self) -> bool:
        c = self.c
        return c.closed or (c.playback.idle and bool(c.received_media_times)
                            and time.monotonic() - c.received_media_times[-1][0] > 1.0)

    async def _wait(self, step: Any, what: str) -> Any:
        try:
            return await step
        except TimeoutError as exc:
            if self.c.closed:
                raise ScriptFailed("engine_closed", f"the engine closed the call ({self.c.close_code}, "
                                                    f"{self.c.close_reason!r}) while waiting for {what}") from exc
            raise ScriptFailed("timed_out", f"timed out waiting for {what}") from exc

    def _end(self, outcome: str, reason: str) -> dict[str, Any]:
        c, rec = self.c, self.record
        rec.update(outcome=outcome, reason=reason, t_end=time.monotonic(), close_code=c.close_code,
                   close_reason=c.close_reason, vanished=self.script == "vanish" and outcome == "ok",
                   **frame_accounting(c))
        return rec


def frame_accounting(c: SyntheticCaller) -> dict[str, Any]:
    """The caller's side of the frame ledger: what it sent (as runs of Twilio timestamps, so the engine's
    last received timestamp says how many it should have), what came back, and what stalled."""
    runs: list[list[int]] = []
    for frame in c.sent_media:
        if runs and frame.timestamp_ms == runs[-1][0] + 20 * runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([frame.timestamp_ms, 1])
    lags = np.array([f.t - f.due for f in c.sent_media]) if c.sent_media else np.zeros(0)
    return {"frames_sent": len(c.sent_media), "sent_runs": runs, "media_received": len(c.received_media_times),
            "underruns": c.underruns, "underrun_ms": round(c.underrun_s * 1000, 1),
            "underrun_at": [[round(at, 2), round(gap, 3)] for at, gap in c.underrun_at],
            "duplicate_marks": c.duplicate_marks, "unexpected": [what for _, what in c.unexpected][:5],
            "sent_late": int((lags > _LATE_SEND_S).sum()),
            "max_send_lag_ms": round(float(lags.max(initial=0)) * 1000, 1)}


def frames_expected(runs: list[list[int]], last_timestamp_ms: int | None) -> int:
    """How many of the sent frames have a timestamp at or before the engine's last received one."""
    if last_timestamp_ms is None:
        return 0
    return sum(min(count, max(0, (last_timestamp_ms - start) // 20 + 1)) for start, count in runs)


async def run_slot(base_url: str, public_url: str, auth_token: str, slot: int, start_at: float, end_at: float,
                   mix: dict[str, float], seed: int, voices: dict[str, Pcm16], timeouts: Timeouts,
                   expect_greeting: bool, report: Any, stopping: Any) -> None:
    """One caller line: from `start_at` to `end_at` (monotonic), call after call, each script drawn from `mix`.
    `report(dict)` gets a "start" event per call and each finished record; `stopping()` ends the line early."""
    rng = random.Random(seed)
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    names, weights = list(mix), list(mix.values())
    n = 0
    while time.monotonic() < end_at and not stopping():
        script = rng.choices(names, weights)[0]
        n += 1
        c = SyntheticCaller(base_url, public_url=public_url, auth_token=auth_token, keep_payloads=False,
                            call_sid=f"CA{seed:08x}{slot:06x}{n:06x}".ljust(34, "0"))
        report({"event": "start", "slot": slot, "call_sid": c.call_sid, "script": script, "t": time.monotonic()})
        record = await ScriptedCall(c, script, rng, voices, timeouts, expect_greeting).run()
        record["slot"] = slot
        report({"event": "call", **record})
        # A refused dial (transport restarting) or a busy line waits a little longer before trying again.
        again = record["outcome"] in ("refused", "busy")
        await asyncio.sleep(rng.uniform(1.0, 2.0) if again else rng.uniform(0.2, 1.0))


async def run_slots(slots: list[dict[str, Any]], common: dict[str, Any], report: Any, stopping: Any) -> None:
    tasks = [asyncio.create_task(run_slot(slot=s["slot"], start_at=s["start_at"], end_at=s["end_at"],
                                          seed=s["seed"], report=report, stopping=stopping, **common))
             for s in slots]
    with contextlib.suppress(asyncio.CancelledError):
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException):  # a line died: say so, loudly (the run then fails)
                report({"event": "error", "error": repr(result)})
