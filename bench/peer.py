"""This engine against the Pipecat peer on the same models, box and caller, in one run: voice-to-voice and CPU.

    python bench/peer.py [--turns 16] [--callers 1] [--peer-turn smart] [--out bench/results/peer.json]

The peer is ../shared/peers/pipecat (Pipecat 1.14 with the same bundled models: Whisper tiny.en,
SmolLM2-135M on a llama.cpp server, Piper en_US-joe-medium; its README says how it runs). Its venv
is made by its setup.sh if missing. Both systems run side by side, idle between their turns; rounds
alternate between them: a round is `--callers` synthetic Twilio callers at once (started 1.3 s apart),
each asking `--turns-per-call` questions in Piper's voice, waiting for each answer to end before the
next. Neither greets (the peer has no greeting; the engine's is turned off).

Measured per system, during its own rounds only: voice-to-voice at the caller (the caller's last
speech frame -> the first reply audio it receives), and CPU of all the system's processes (engine:
supervisor and children; peer: bot and LLM server), in % of one core averaged over the rounds' wall
time, and in CPU seconds per answer. The second is the fairer measure of calls per box: a system whose
answers come later or last longer spends more wall time per round, which lowers its % without saving
any work. Also the seconds of audio each answer brings the caller, and CPU seconds per second of it: answers
of different lengths cost different work (the two systems cap a reply differently: the engine at
`llm.max_sentences` and `llm.max_tokens`, the peer at 80 tokens). Ratios are engine / peer. `--keep DIR`
keeps both sides' logs and the engine's call recordings, to read what each system said.

The same small model says more on one prompt than on another, and every word costs both systems CPU in the
LLM and the TTS. So the engine is given the peer's system prompt and sampling temperature, read from the
peer's bot.py, and the two answer the same instructions; `--engine-prompt` keeps the engine's own (as runs
before 2026-12-03 did). The peer's LLM server samples with a fixed seed, so it gives each question the same answer
every time; the engine's does not. `--temperature 0` makes both greedy: each says the same to the same dialogue
every run, so reply lengths (and the CPU they cost) stop moving between runs.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import machine_info, wait_for_idle  # noqa: E402
from bench.e2e import AUTH, PUBLIC, Engine  # noqa: E402
from engine.trace_report import percentiles  # noqa: E402
from tools.caller import StreamTarget, SyntheticCaller, piper_speech  # noqa: E402
from tools.engine_run import instance_pids  # noqa: E402
from tools.soak_calls import QUESTIONS  # noqa: E402
from tools.solo import free_port  # noqa: E402

PEER_DIR = (ROOT.parent / "shared" / "peers" / "pipecat").resolve()
PEER_VENV = Path(os.environ.get("PEER_VENV", "/tmp/peer-pipecat-venv"))
CALLER_STAGGER_S = 1.3
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pids: list[int]) -> float:
    """CPU seconds the processes have used so far (those still alive)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def peer_instructions() -> tuple[str, float]:
    """The peer's system prompt and temperature: bot.py's SYSTEM_PROMPT and its --temperature default."""
    tree = ast.parse((PEER_DIR / "bot.py").read_text())
    prompt = next(str(node.value.value) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "SYSTEM_PROMPT" for t in node.targets)
                  and isinstance(node.value, ast.Constant))
    temperature = next(float(str(kw.value.value)) for node in ast.walk(tree) if isinstance(node, ast.Call) and node.args
                       and isinstance(node.args[0], ast.Constant) and node.args[0].value == "--temperature"
                       for kw in node.keywords if kw.arg == "default" and isinstance(kw.value, ast.Constant))
    return prompt, temperature


class Peer:
    """The Pipecat bot and its llama.cpp server, started with the peer's own run.sh."""

    def __init__(self, turn: str, extra: list[str]) -> None:
        if not (PEER_VENV / "bin" / "python").is_file():
            print(f"making the peer's venv ({PEER_VENV}) with its setup.sh ...", flush=True)
            subprocess.run(["bash", str(PEER_DIR / "setup.sh")], check=True,
                           env={**os.environ, "VENV": str(PEER_VENV)})
        self.port = free_port()
        self.state = Path(tempfile.mkdtemp(prefix="peer-state"))
        env = {**os.environ, "STATE_DIR": str(self.state), "VENV": str(PEER_VENV)}
        subprocess.run(["bash", str(PEER_DIR / "run.sh"), "start", str(self.port), "--", "--turn", turn, *extra],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        self._env = env

    def pids(self) -> list[int]:
        return [int(line.split()[1]) for line in (self.state / "pids").read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        subprocess.run(["bash", str(PEER_DIR / "run.sh"), "stop"], env=self._env, stdout=subprocess.DEVNULL,
                       check=False)

    def cleanup(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)


async def one_caller(url: str, peer: bool, questions: list[str], voices: dict[str, Any],
                     delay: float) -> list[tuple[float, float]]:
    """A caller asking `questions` in turn; voice-to-voice (ms) and seconds of reply audio of each answer. The engine
    is dialled through its signed webhook; the peer's TwiML names a plain ws:// stream (which Twilio would refuse),
    so its socket is opened directly, at the path that TwiML gives."""
    await asyncio.sleep(delay)
    out: list[tuple[float, float]] = []
    async with SyntheticCaller(url, public_url=PUBLIC, auth_token=AUTH) as c:
        await c.connect(StreamTarget(url="wss://peer.local/ws") if peer else await c.dial(), continuous=True)
        await c.send_silence(1.0)
        for question in questions:
            pcm = voices[question]
            sent_before = len(c.sent_media)
            await c.send_audio(pcm)
            _, speech_end = c.speech_bounds(sent_before, pcm)
            reply_at = await c.first_media_after(speech_end, 30)
            await c.wait_quiet(1.5, 60)
            audio = sum(n for t, n in c.received_media_times if t >= reply_at) / 8000  # μ-law: a byte a sample
            out.append((round((reply_at - speech_end) * 1000, 1), round(audio, 2)))
        await c.hangup()
    return out


async def round_of(url: str, peer: bool, callers: int, turns: int, first: int,
                   voices: dict[str, Any]) -> list[tuple[float, float]]:
    plans = [[QUESTIONS[(first + i * turns + k) % len(QUESTIONS)] for k in range(turns)] for i in range(callers)]
    results = await asyncio.gather(*(one_caller(url, peer, plan, voices, i * CALLER_STAGGER_S)
                                     for i, plan in enumerate(plans)))
    return [v for r in results for v in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=16, help="answers measured per system (at least)")
    parser.add_argument("--turns-per-call", type=int, default=4)
    parser.add_argument("--callers", type=int, default=1, help="callers at once in each round")
    parser.add_argument("--peer-turn", choices=["smart", "vad"], default="smart",
                        help="the peer's end of turn: Pipecat's default (Smart Turn v3) or Silero + 0.6 s")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config setting for the engine (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "peer.json")
    parser.add_argument("--engine-prompt", action="store_true",
                        help="keep the engine's own system prompt and temperature, not the peer's")
    parser.add_argument("--temperature", type=float,
                        help="sample both systems' LLMs at this temperature (0: greedy, the same answer to the same "
                             "dialogue every time, on both sides); default: the peer's")
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="keep each side's logs here (the engine's log, trace and call recordings; the peer's "
                             "logs, with each LLM reply) to read what was said")
    args = parser.parse_args()
    print("synthesising the caller's questions with Piper ...", flush=True)
    voices = {q: piper_speech(q, rate=8000) for q in QUESTIONS}
    work = Path(tempfile.mkdtemp(prefix="peer-bench"))
    # Admission off: the peer has none, and a turned-away caller would end the round.
    recordings = [f"transport.recordings_dir={work / 'recordings'}"] if args.keep else []
    same: list[str] = []  # what the engine is told as the peer is
    temperature = args.temperature
    if not args.engine_prompt:
        prompt, peer_temperature = peer_instructions()
        same.append(f"llm.system_prompt={prompt}")
        temperature = peer_temperature if temperature is None else temperature
    if temperature is not None:
        same.append(f"llm.temperature={temperature}")
    engine = Engine("engine", ROOT, work, ["conversation.greeting=", "engine.admit_max_response_ms=0",
                                           "engine.admit_max_cpu_pct=0", *same, *recordings, *args.set])
    peer = Peer(args.peer_turn, [] if args.temperature is None else ["--temperature", str(args.temperature)])
    systems = {"engine": f"http://127.0.0.1:{engine.port}", "pipecat": f"http://127.0.0.1:{peer.port}"}
    v2v: dict[str, list[float]] = {name: [] for name in systems}
    reply_s: dict[str, list[float]] = {name: [] for name in systems}
    cpu = {name: 0.0 for name in systems}
    wall = {name: 0.0 for name in systems}
    try:
        engine.wait_healthy(180)
        conditions = {} if args.no_wait else wait_for_idle(1.0, 900)
        pids = {"engine": lambda: instance_pids(engine.instance), "pipecat": peer.pids}
        while any(len(v) < args.turns for v in v2v.values()):
            for name, url in systems.items():
                if len(v2v[name]) >= args.turns:
                    continue
                procs = pids[name]()
                c0, t0 = cpu_s(procs), time.monotonic()
                got = asyncio.run(round_of(url, name == "pipecat", args.callers, args.turns_per_call, len(v2v[name]),
                                           voices))
                cpu[name] += cpu_s(procs) - c0
                wall[name] += time.monotonic() - t0
                v2v[name] += [ms for ms, _ in got]
                reply_s[name] += [s for _, s in got]
                print(f"{name}: {len(got)} answers, voice-to-voice p50 {percentiles(v2v[name])['p50']:.0f} ms, "
                      f"reply audio p50 {percentiles(reply_s[name])['p50']:.1f} s", flush=True)
    finally:
        peer.stop()
        engine.stop()
        if args.keep:
            shutil.copytree(work, args.keep / "engine", dirs_exist_ok=True)
            shutil.copytree(peer.state, args.keep / "pipecat", dirs_exist_ok=True)
        peer.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    latency = {name: {**percentiles(v), "p90": float(sorted(v)[int(0.9 * (len(v) - 1))])} for name, v in v2v.items()}
    load = {name: round(100 * cpu[name] / wall[name], 1) for name in systems}
    per_answer = {name: round(cpu[name] / len(v2v[name]), 3) for name in systems}
    per_reply_s = {name: round(cpu[name] / sum(reply_s[name]), 3) for name in systems}
    reply_p = {name: percentiles(reply_s[name]) for name in systems}
    figures = {name: {"voice_to_voice_ms": latency[name], "cpu_pct_of_one_core": load[name],
                      "cpu_s_per_answer": per_answer[name], "cpu_s": round(cpu[name], 2),
                      "reply_audio_s": reply_p[name], "cpu_s_per_reply_audio_s": per_reply_s[name],
                      "wall_s": round(wall[name], 2)} for name in systems}
    ratios = {f"v2v_{q}": round(latency["engine"][q] / latency["pipecat"][q], 3) for q in ("p50", "p90", "p95")}
    ratios["cpu"] = round(load["engine"] / load["pipecat"], 3)
    ratios["cpu_s_per_answer"] = round(per_answer["engine"] / per_answer["pipecat"], 3)
    ratios["cpu_s_per_reply_audio_s"] = round(per_reply_s["engine"] / per_reply_s["pipecat"], 3)
    print(f"\n{args.callers} caller(s) at once, peer end of turn: {args.peer_turn}")
    print(f"{'system':<10} {'n':>4} {'v2v p50':>9} {'p90':>7} {'p95':>7} {'max':>7} {'CPU % of a core':>16} "
          f"{'CPU s/answer':>13} {'reply s p50':>12} {'CPU s/reply s':>14}")
    for name, v in latency.items():
        print(f"{name:<10} {v['n']:>4} {v['p50']:>9.0f} {v['p90']:>7.0f} {v['p95']:>7.0f} {v['max']:>7.0f} "
              f"{load[name]:>16.1f} {per_answer[name]:>13.2f} {reply_p[name]['p50']:>12.1f} "
              f"{per_reply_s[name]:>14.3f}")
    print(f"{'ratio':<10} {'':>4} {ratios['v2v_p50']:>9.3f} {ratios['v2v_p90']:>7.3f} {ratios['v2v_p95']:>7.3f} "
          f"{'':>7} {ratios['cpu']:>16.3f} {ratios['cpu_s_per_answer']:>13.3f} {'':>12} "
          f"{ratios['cpu_s_per_reply_audio_s']:>14.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "engine vs Pipecat peer", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(), "conditions": conditions, "callers": args.callers, "peer_turn": args.peer_turn,
        "temperature_both": args.temperature,
        "engine_settings": [*same, *args.set], "systems": figures, "ratios_engine_over_pipecat": ratios, "v2v_ms": v2v,
        "reply_audio_s": reply_s,
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
