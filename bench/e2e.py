"""Voice-to-voice and barge-in latency of whole calls on the embedded default, with the per-stage breakdown.

    python bench/e2e.py [--turns 24] [--out bench/results/e2e.json]
    python bench/e2e.py --vs ../base --turns 48   # this tree against another checkout, in one run

With `--vs DIR`, a second engine runs from the checkout in DIR (same models, same box,
started side by side); calls alternate between the two, one call at a time, and the
report gives each engine's figures and their ratios (this tree / DIR).

Starts the real engine (`python -m engine supervisor`, default config: Whisper
tiny.en, SmolLM2-135M, Piper) with a trace file, and talks to it through the
synthetic Twilio caller, one call at a time, several turns per call. The caller
speaks questions in Piper's voice over a continuous line (silence between words).

A last call per engine speaks sentences with a pause of 300-700 ms in the middle ("What is the
capital, [pause] of France?") and counts those the engine kept as one turn: by its trace, no
reply (that was not thrown away unheard) answered the words before the pause.

Measured at the caller, on its clock:
- voice-to-voice: the caller's last speech frame sent -> the first reply media
  frame received (what a person would hear as the bot's reaction time);
- barge-in: on every third turn the caller talks over the answer once it has heard
  1.5 s of it; first frame of that speech sent -> Twilio `clear` received.
The engine's own trace gives the per-stage breakdown (`python -m engine trace`).
Baseline, from the same run: the time spent in models and in the end-of-turn
silence (policy) per reply; the ratio says what the engine's plumbing adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_info, setting_env, wait_for_idle
from engine.trace import read_events
from engine.trace_report import Reply, percentiles, replies, summarize
from tools.caller import SyntheticCaller, piper_speech
from tools.soak_calls import INTERRUPTION, QUESTIONS  # the soak's callers ask the same
from tools.solo import free_port

AUTH = "bench-auth-token"
PUBLIC = "https://voice.bench.test"


ROOT = Path(__file__).resolve().parent.parent


class Engine:
    """One engine under test, from the checkout `root`, with its own trace file."""

    def __init__(self, label: str, root: Path, work: Path, settings: list[str] | None = None) -> None:
        self.label = label
        self.root = root
        self.trace = work / f"trace-{label}.jsonl"
        log = work / f"engine-{label}.log"
        self.port = free_port()
        self.runtime = Path(tempfile.mkdtemp(prefix="e2e", dir="/tmp"))
        self.health: dict[str, Any] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
        env["PYTHONPATH"] = str(root)  # `-m engine` finds that checkout's engine before any installed one
        trace = self.trace
        self.instance = f"e2e{os.getpid()}{label}"
        env.update({"ENGINE_ENGINE__INSTANCE": self.instance,
                    "ENGINE_ENGINE__RUNTIME_DIR": str(self.runtime),
                    "ENGINE_ENGINE__TRACE_FILE": str(trace), "ENGINE_TRANSPORT__HOST": "127.0.0.1",
                    "ENGINE_TRANSPORT__PORT": str(self.port), "ENGINE_TRANSPORT__PUBLIC_URL": PUBLIC,
                    "ENGINE_TWILIO__AUTH_TOKEN": AUTH, "ENGINE_CONVERSATION__IDLE_REPROMPT_S": "60"})
        env.update(setting_env(settings or []))
        self._log = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "engine", "supervisor"], env=env, cwd=root,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"engine exited with {self.proc.returncode}; see its log")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("engine not healthy in time")

    def fetch_health(self) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
            self.health = json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        shutil.rmtree(self.runtime, ignore_errors=True)


async def interrupt(c: SyntheticCaller, words: np.ndarray) -> float | None:
    """Talk over the answer once 1.5 s of it has played: ms from the first word sent to `clear` received.
    None if the answer ended first (nothing to interrupt)."""
    heard = c.heard_seconds

    def answer_over() -> bool:
        return c.playback.idle and time.monotonic() - c.received_media_times[-1][0] > 1.0

    await c.wait_until(lambda: c.heard_seconds >= heard + 1.5 or answer_over(), 30, "1.5 s of the answer")
    if c.heard_seconds < heard + 1.5:
        return None
    clears = len(c.clears)
    sent_before = len(c.sent_media)
    talking = asyncio.ensure_future(c.send_audio(words))
    try:
        await c.wait_until(lambda: len(c.clears) > clears, 10, "clear")
    except TimeoutError:  # a missed barge-in: counted, not fatal to the run
        await talking
        await c.wait_quiet(1.5, 60)
        return float("nan")
    await talking
    onset, end = c.speech_bounds(sent_before, words)
    await c.first_media_after(end, 30)  # the answer to the interruption, before the next question
    return round((c.clears[clears] - onset) * 1000, 1)


async def one_call(port: int, turns: int, first_turn: int, voices: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async with SyntheticCaller(f"http://127.0.0.1:{port}", public_url=PUBLIC, auth_token=AUTH) as c:
        await c.connect(await c.dial(), continuous=True)
        await c.first_media_after(0.0, 30)
        await c.wait_quiet(1.0, 30)  # the greeting
        for k in range(turns):
            turn = first_turn + k
            question = QUESTIONS[turn % len(QUESTIONS)]
            pcm = voices[question]
            sent_before = len(c.sent_media)
            await c.send_audio(pcm)
            _, speech_end = c.speech_bounds(sent_before, pcm)
            reply_at = await c.first_media_after(speech_end, 30)
            row: dict[str, Any] = {"turn": turn, "question": question, "call": c.call_sid,
                                   "voice_to_voice_ms": round((reply_at - speech_end) * 1000, 1),
                                   "speech_end_t": speech_end, "reply_at_t": reply_at}
            if turn % 3 == 2:  # talk over this answer once 1.5 s of it has played
                row["barge_in_ms"] = await interrupt(c, voices[INTERRUPTION])
            await c.wait_quiet(1.5, 60)
            rows.append(row)
            print(f"  turn {turn:2d}: voice-to-voice {row['voice_to_voice_ms']:7.1f} ms"
                  + (f", barge-in {row['barge_in_ms']} ms" if "barge_in_ms" in row else ""), flush=True)
        await c.hangup()
    return rows


PAUSED = (("What is the largest planet,", "in our solar system?"), ("Can you recommend,", "a good book to read?"),
          ("How many days are there,", "in a week?"), ("What color is the sky,", "on a clear day?"),
          ("How do I make,", "a cup of tea?"), ("Tell me a fun fact,", "about cats."),
          ("What is the boiling point,", "of water?"), ("What is the capital,", "of France?"))
PAUSES_S = (0.3, 0.4, 0.5, 0.6, 0.7, 0.35, 0.45, 0.65)


async def paused_sentences(port: int, voices: dict[str, Any]) -> list[dict[str, Any]]:
    """Sentences with a pause inside: kept as one turn when no reply audio came before the sentence was over."""
    rows: list[dict[str, Any]] = []
    async with SyntheticCaller(f"http://127.0.0.1:{port}", public_url=PUBLIC, auth_token=AUTH) as c:
        await c.connect(await c.dial(), continuous=True)
        await c.first_media_after(0.0, 30)
        await c.wait_quiet(1.0, 30)  # the greeting
        for (first, second), pause in zip(PAUSED, PAUSES_S, strict=True):
            sent_before = len(c.sent_media)
            await c.send_audio(voices[first])
            first_start, _ = c.speech_bounds(sent_before, voices[first])
            await c.send_silence(pause)
            sent_before = len(c.sent_media)
            await c.send_audio(voices[second])
            second_start, second_end = c.speech_bounds(sent_before, voices[second])
            await c.first_media_after(second_end, 30)
            await c.wait_quiet(1.5, 60)
            rows.append({"sentence": f"{first} {second}", "pause_ms": round(pause * 1000), "first_start_t": first_start,
                         "second_start_t": second_start})
        await c.hangup()
    return rows


def trim(pcm: np.ndarray) -> np.ndarray:
    """Speech without the synthesiser's silence before and after it."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 600)
    return pcm[loud[0]:loud[-1] + 1] if len(loud) else pcm


def kept_one_turn(rows: list[dict[str, Any]], found: list[Reply]) -> list[dict[str, Any]]:
    """Caller and engine share CLOCK_MONOTONIC: a sentence was split if a reply the caller could hear answered
    speech that ended before its second half began."""
    for row in rows:
        split = [r for r in found if "speech_end" in r.stages and "reply_discarded" not in r.stages
                 and row["first_start_t"] < r.stages["speech_end"] / 1e9 < row["second_start_t"]]
        row["one_turn"] = not split
    return rows


def join_trace(rows: list[dict[str, Any]], found: list[Reply]) -> None:
    """Caller and engine share CLOCK_MONOTONIC: for each turn, how far the engine's idea of the speech end
    lags the caller's last loud frame (VAD tail), and how long the first reply frame took from leaving the
    transport to reaching the caller."""
    for row in rows:
        answers = [r for r in found if r.call == row["call"] and "speech_end" in r.stages
                   and "first_audio_out" in r.stages and r.stages["speech_end"] / 1e9 > row["speech_end_t"] - 1.0]
        if not answers:
            continue
        reply = min(answers, key=lambda r: r.stages["speech_end"])
        row["vad_speech_end_lag_ms"] = round((reply.stages["speech_end"] / 1e9 - row["speech_end_t"]) * 1000, 1)
        row["engine_v2v_ms"] = reply.ms("speech_end", "first_audio_out")
        row["out_to_caller_ms"] = round((row["reply_at_t"] - reply.stages["first_audio_out"] / 1e9) * 1000, 1)


def figures(rows: list[dict[str, Any]], engine: Engine) -> dict[str, Any]:
    """One engine's figures: at the caller, from its trace, and the transport's own per-frame cost."""
    found = replies(read_events(engine.trace))
    stages = summarize(found)
    join_trace(rows, found)
    v2v = percentiles([r["voice_to_voice_ms"] for r in rows])
    baseline = stages["models_and_policy_ms"]
    transport = engine.health.get("transport", {})
    return {
        "root": str(engine.root), "turns": len(rows),
        "voice_to_voice_ms": v2v,
        "barge_in_ms": percentiles([r["barge_in_ms"] for r in rows
                                    if r.get("barge_in_ms") is not None and r["barge_in_ms"] == r["barge_in_ms"]]),
        "barge_ins_missed": sum(1 for r in rows if r.get("barge_in_ms") != r.get("barge_in_ms")),
        "vad_speech_end_lag_ms": percentiles([r["vad_speech_end_lag_ms"] for r in rows
                                              if "vad_speech_end_lag_ms" in r]),
        "out_to_caller_ms": percentiles([r["out_to_caller_ms"] for r in rows if "out_to_caller_ms" in r]),
        "baseline_models_and_policy_ms": baseline,
        "ratio_v2v_to_baseline_p50": round(v2v["p50"] / baseline["p50"], 3) if baseline["n"] and v2v["n"] else None,
        "engine_overhead_ms": stages["engine_overhead_ms"],
        "transport_inbound_frame_us": transport.get("inbound_frame_us"),
        "transport_outbound_frame_us": transport.get("outbound_frame_us"),
        "engine_stages": stages,
    }


FIGURES = (("voice-to-voice, at the caller", "voice_to_voice_ms"),
           ("barge-in: speech sent -> clear received", "barge_in_ms"),
           ("baseline: models + end-of-turn silence", "baseline_models_and_policy_ms"),
           ("VAD's speech end after the caller's", "vad_speech_end_lag_ms"),
           ("first reply frame: transport -> caller", "out_to_caller_ms"),
           ("engine overhead (trace)", "engine_overhead_ms"),
           ("transport: a media message in (us)", "transport_inbound_frame_us"),
           ("transport: a frame out (us)", "transport_outbound_frame_us"))


def print_table(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The figures, each engine in turn; with two engines, their ratios (first / second) at p50 and p95."""
    labels = list(results)
    print(f"\n{'figure (ms unless said)':<42} {'engine':>6} {'n':>5} {'p50':>8} {'p95':>8} {'p99':>8}")
    ratios: dict[str, dict[str, float]] = {}
    for name, key in FIGURES:
        for label in labels:
            row = results[label].get(key) or {}
            if row.get("n"):
                cells = " ".join(f"{row[p]:>8.1f}" if p in row else f"{'-':>8}" for p in ("p50", "p95", "p99"))
                print(f"{name:<42} {label:>6} {row['n']:>5} {cells}")
        if len(labels) == 2:
            a, b = (results[label].get(key) or {} for label in labels)
            if a.get("n") and b.get("n") and b["p50"]:
                ratios[key] = {"p50": round(a["p50"] / b["p50"], 3)}
                if a.get("p95") and b.get("p95"):
                    ratios[key]["p95"] = round(a["p95"] / b["p95"], 3)
                p95 = f"{ratios[key]['p95']:>8.3f}" if "p95" in ratios[key] else f"{'-':>8}"
                print(f"{'':<42} {'ratio':>6} {'':>5} {ratios[key]['p50']:>8.3f} {p95}")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=24, help="turns per engine")
    parser.add_argument("--turns-per-call", type=int, default=6)
    parser.add_argument("--vs", metavar="DIR", help="also run the engine of the checkout in DIR, alternating calls")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config setting for this tree's engine (repeatable)")
    parser.add_argument("--vs-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config setting for the --vs engine (repeatable); `--vs . --vs-set ...` compares "
                             "two settings of this tree")
    parser.add_argument("--out", default="bench/results/e2e.json")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for an idle box")
    args = parser.parse_args()
    conditions = {} if args.no_wait else wait_for_idle(0.5, 600)
    work = Path(tempfile.mkdtemp(prefix="e2e-bench"))
    print("synthesising the caller's questions with Piper ...", flush=True)
    voices = {text: piper_speech(text, rate=8000) for text in [*QUESTIONS, INTERRUPTION]}
    # Halves without Piper's own leading and trailing silence: the pause between them is the one asked for.
    voices.update({half: trim(piper_speech(half, rate=8000)) for pair in PAUSED for half in pair})
    engines = [Engine("this", ROOT, work, args.set)]
    if args.vs:
        engines.append(Engine("vs", Path(args.vs).resolve(), work, args.vs_set))
    rows: dict[str, list[dict[str, Any]]] = {e.label: [] for e in engines}
    try:
        for engine in engines:
            engine.wait_healthy(180)
        t0 = time.monotonic()
        while any(len(rows[e.label]) < args.turns for e in engines):
            for engine in engines:  # one call each in turn: the same box, the same moment
                done = rows[engine.label]
                n = min(args.turns_per_call, args.turns - len(done))
                if n > 0:
                    print(f"{engine.label}: call {len(done) // args.turns_per_call + 1}, {n} turns", flush=True)
                    done += asyncio.run(one_call(engine.port, n, len(done), voices))
        paused: dict[str, list[dict[str, Any]]] = {}
        for engine in engines:
            print(f"{engine.label}: sentences with a pause inside", flush=True)
            paused[engine.label] = asyncio.run(paused_sentences(engine.port, voices))
        wall = time.monotonic() - t0
        for engine in engines:
            engine.fetch_health()
    finally:
        for engine in engines:
            engine.stop()
    time.sleep(0.5)
    results = {e.label: figures(rows[e.label], e) for e in engines}
    for engine in engines:
        marked = kept_one_turn(paused[engine.label], replies(read_events(engine.trace)))
        kept = [p["one_turn"] for p in marked]
        results[engine.label]["paused_sentences"] = {"kept_one_turn": sum(kept), "of": len(kept), "rows": marked}
    ratios = print_table(results)
    for label, r in results.items():
        p = r["paused_sentences"]
        print(f"sentences with a 300-700 ms pause inside kept as one turn ({label}): {p['kept_one_turn']} of {p['of']}")
    this = results["this"]
    result = {
        "benchmark": "e2e", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_s": round(wall, 1),
        "machine": machine_info(), "conditions": conditions,
        "config": "embedded default (engine/config.py, then --set / --vs-set): whisper tiny.en int8, SmolLM2-135M "
                  "Q4_1 (llama.cpp), Piper en_US-joe-medium; one call at a time"
                  + ("; calls alternate between two engines" if args.vs else ""),
        **{k: v for k, v in this.items() if k != "engine_stages"}, "engine_stages": this["engine_stages"],
        "engines": {label: {k: v for k, v in r.items() if k != "engine_stages"} for label, r in results.items()},
        "settings": {"this": args.set, "vs": args.vs_set},
        "ratios_this_over_vs": ratios, "turns": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    shutil.copy(engines[0].trace, Path(args.out).with_suffix(".trace.jsonl"))
    print(f"voice-to-voice / baseline at p50: {this['ratio_v2v_to_baseline_p50']}")
    print(f"per-stage breakdown: python -m engine trace {Path(args.out).with_suffix('.trace.jsonl')}")
    print(f"wrote {args.out}")
    shutil.rmtree(work, ignore_errors=True)  # the trace was copied beside the results; the logs only matter on failure


if __name__ == "__main__":
    main()
