"""`python -m engine soak`: many synthetic callers against a real engine for minutes or hours, with faults.

    python -m engine soak --callers 8 --duration 60
    python -m engine soak --callers 6 --duration 1200 --profile steady --json bench/results/soak.json
    python -m engine soak --callers 8 --duration 60 --kill speech,llm,tts,transport --every 12
    python -m engine soak --callers 60 --duration 120 --mix listen=1     # transport + VAD only

Starts its own engine (`python -m engine supervisor`, the embedded default or `--config FILE`) with a
unique instance name, so its shared memory, sockets and processes can be counted before and after.
Caller lines run in `--caller-procs` processes of their own (the load generator never shares an event
loop with the measurement); each line places call after call from the `--mix` of scripts
(tools/soak_calls.py) between the times its `--profile` gives it:

  steady  every line starts within the first seconds and runs to the end
  ramp    lines start one by one over the first half, then all run to the end
  spike   a quarter of the lines run throughout; the rest all start at one third and stop at two thirds

While it runs, one progress line every two seconds. At the end, the report (tools/soak_report.py) as a
table and, with `--json`, as JSON. Exit status 0 when every call reached an outcome, no inbound frame
was lost outside speech/transport faults and nothing leaked; 1 otherwise; 2 when the engine would not
start.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

from engine.config import SupervisorSection
from ipc.schema import PROC_NAMES
from tools.engine_run import EngineRun
from tools.soak_calls import SCRIPTS, Timeouts, run_slots, synthesise_voices
from tools.soak_report import percentiles, summarize, table
from tools.soak_watch import EngineWatch, Killer, fd_count, settled_snapshot, snapshot

AUTH = "soak-auth-token-0123456789abcdef"
PUBLIC = "https://voice.soak.test"
PROFILES = ("steady", "ramp", "spike")
DEFAULT_MIX = "question=4,interrupt=2,dtmf=1,silent=1,midword=1,vanish=1"
CALLERS_PER_PROC = 40
SETTLE_S = 60.0  # after the last line stops dialling, how long in-flight calls may take to end


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in SCRIPTS:
            raise ValueError(f"unknown script {name!r} in --mix: one of {', '.join(SCRIPTS)}")
        try:
            mix[name] = float(weight or 1)
        except ValueError:
            raise ValueError(f"--mix weight for {name} is not a number: {weight!r}") from None
        if mix[name] < 0:
            raise ValueError(f"--mix weight for {name} is negative")
    if not mix or not sum(mix.values()):
        raise ValueError("--mix names no script with a positive weight")
    return mix


def plan_lines(profile: str, callers: int, duration_s: float, seed: int) -> list[dict[str, Any]]:
    """Each caller line's start and end, in seconds from the start of the run, and its own seed."""
    stagger = min(5.0, duration_s / 10) / max(1, callers)
    lines = []
    base = max(1, callers // 4)
    for i in range(callers):
        if profile == "steady":
            start, end = i * stagger, duration_s
        elif profile == "ramp":
            start, end = i * duration_s / 2 / callers, duration_s
        elif profile == "spike":
            start, end = ((i * stagger, duration_s) if i < base
                          else (duration_s / 3 + (i - base) * 0.05, 2 * duration_s / 3))
        else:
            raise ValueError(f"unknown profile {profile!r}: one of {', '.join(PROFILES)}")
        lines.append({"slot": i, "start": round(start, 3), "end": round(end, 3), "seed": seed * 1000 + i})
    return lines


def _caller_proc(lines: list[dict[str, Any]], common: dict[str, Any], conn: Connection) -> None:
    """A caller process: synthesise the voices, say ready, wait for the start time, run its lines, say done.
    Events go to the parent as JSON over `conn`; the parent's {"t0": ...} starts the lines, {"stop": true}
    stops them placing new calls."""
    import asyncio
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    stop = threading.Event()
    send_lock = threading.Lock()

    def send(event: dict[str, Any]) -> None:
        with send_lock:
            conn.send_bytes(json.dumps(event).encode())

    try:
        voices = synthesise_voices()
        gc.collect()
        gc.freeze()  # the voices and the libraries: never scanned again
        send({"event": "ready", "pid": os.getpid()})
        t0 = json.loads(conn.recv_bytes())["t0"]

        def listen() -> None:
            with contextlib.suppress(EOFError, OSError):
                while not json.loads(conn.recv_bytes()).get("stop"):
                    pass
            stop.set()

        threading.Thread(target=listen, daemon=True).start()
        slots = [{"slot": ln["slot"], "seed": ln["seed"], "start_at": t0 + ln["start"], "end_at": t0 + ln["end"]}
                 for ln in lines]
        asyncio.run(run_slots(slots, {**common, "voices": voices}, send, stop.is_set))
    except BaseException as exc:
        send({"event": "error", "pid": os.getpid(), "error": repr(exc)})
        raise
    finally:
        send({"event": "done", "pid": os.getpid()})
        conn.close()


class Progress:
    def __init__(self, t0: float, duration_s: float) -> None:
        self.t0, self.duration_s = t0, duration_s
        self.tty = sys.stdout.isatty()
        self.last_line = 0.0

    def show(self, active: int, records: list[dict[str, Any]], watch: EngineWatch, kills: int) -> None:
        now = time.monotonic()
        if now - self.last_line < (2.0 if self.tty else 10.0):
            return
        self.last_line = now
        ok = sum(1 for r in records if r["outcome"] == "ok")
        refused = sum(1 for r in records if r["outcome"] in ("refused", "busy"))
        v2v = percentiles([ms for r in records[-200:] for ms in r["voice_to_voice_ms"]])
        with watch.lock:
            sample = watch.samples[-1]["procs"] if watch.samples else {}
            engine_calls = watch.calls_active
            restarts = sum(p.get("restarts", 0) for p in watch.procs.values())
        rss = sum(p["rss_mb"] for p in sample.values())
        cpu = sum(p["cpu_pct"] or 0 for p in sample.values())
        line = (f"[{now - self.t0:6.0f}/{self.duration_s:.0f} s] lines in a call {active:3d} "
                f"(engine {engine_calls:3d}) | calls ok {ok}, not as scripted {len(records) - ok - refused}, "
                f"refused {refused} | v2v p50 {v2v.get('p50', 0):.0f} p95 {v2v.get('p95', 0):.0f} ms | "
                f"engine {rss:.0f} MiB {cpu:.0f}% CPU | kills {kills}, restarts {restarts}")
        print(("\r" + line[:200] + "\033[K") if self.tty else line, end="" if self.tty else "\n", flush=True)

    def done(self) -> None:
        if self.tty:
            print(flush=True)


def engine_overrides(args: argparse.Namespace, listen_only: bool) -> dict[str, str]:
    overrides = {
        "ENGINE_ENGINE__MAX_CALLS": str(args.callers + 4),
        "ENGINE_ENGINE__LOG_LEVEL": args.log_level,
        "ENGINE_TRANSPORT__PUBLIC_URL": PUBLIC, "ENGINE_TWILIO__AUTH_TOKEN": AUTH,
        "ENGINE_TRANSPORT__RECORDINGS_DIR": "",
        "ENGINE_SUPERVISOR__HEARTBEAT_INTERVAL_S": str(SupervisorSection().heartbeat_interval_s),
        "ENGINE_SUPERVISOR__DRAIN_TIMEOUT_S": "10",
        # The silent script hears one re-prompt, then the goodbye: ~10 s, not the production 24.
        "ENGINE_CONVERSATION__IDLE_REPROMPT_S": "3600" if listen_only else "3",
        "ENGINE_CONVERSATION__MAX_REPROMPTS": "1",
    }
    if listen_only:
        overrides["ENGINE_CONVERSATION__GREETING"] = ""
    if args.config:
        overrides["ENGINE_CONFIG"] = str(Path(args.config).resolve())
    if args.trace:
        overrides["ENGINE_ENGINE__TRACE_FILE"] = str(Path(args.trace).resolve())
    return overrides


def warm_up(port: int, listen_only: bool) -> dict[str, Any]:
    """One whole call before the baseline is taken: each process opens its lazy resources (bus connections to
    its peers, thread pools) on its first call, and those are not leaks. Later calls must add nothing."""
    import asyncio

    from tools.caller import SyntheticCaller
    from tools.soak_calls import ScriptedCall

    voices = synthesise_voices()
    c = SyntheticCaller(f"http://127.0.0.1:{port}", public_url=PUBLIC, auth_token=AUTH, keep_payloads=False)
    call = ScriptedCall(c, "listen" if listen_only else "question", random.Random(0), voices,
                        Timeouts(listen_s=2.0), expect_greeting=not listen_only)
    return asyncio.run(call.run())


class CallerProcs:
    """The caller processes, each with a pipe of JSON events; `close()` leaves no fd or process behind."""

    def __init__(self, lines: list[dict[str, Any]], n: int, common: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for k in range(n):
            ours, theirs = ctx.Pipe()
            p = ctx.Process(target=_caller_proc, args=(lines[k::n], common, theirs), name=f"soak-callers-{k}")
            p.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(p)
        self._open = list(self.conns)

    def wait_ready(self, timeout: float) -> None:
        ready = 0
        deadline = time.monotonic() + timeout
        while ready < len(self.procs):
            event = self.next_event(max(0.0, deadline - time.monotonic()))
            if event is None:
                raise RuntimeError(f"caller processes not ready after {timeout:g} s")
            if event["event"] == "error":
                raise RuntimeError(f"a caller process failed: {event['error']}")
            ready += event["event"] == "ready"

    @property
    def connected(self) -> bool:
        return bool(self._open)

    def tell(self, message: dict[str, Any]) -> None:
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.send_bytes(json.dumps(message).encode())

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        for conn in mp_wait(self._open, timeout):
            assert isinstance(conn, Connection)
            try:
                event: dict[str, Any] = json.loads(conn.recv_bytes())
            except (EOFError, OSError):
                self._open.remove(conn)  # that process is gone; its "done" came before, or it crashed
                continue
            return event
        return None

    def close(self) -> None:
        self.tell({"stop": True})
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
            p.close()
        for conn in self.conns:
            conn.close()
        self.procs, self.conns, self._open = [], [], []


def run_soak(args: argparse.Namespace) -> int:
    mix = parse_mix(args.mix)
    kill = [k for k in (args.kill or "").split(",") if k]
    for k in kill:
        if k not in PROC_NAMES:
            raise ValueError(f"--kill {k!r}: one of {', '.join(PROC_NAMES)}")
    if kill and not args.every:
        raise ValueError("--kill needs --every SECONDS")
    listen_only = set(mix) == {"listen"}
    engine = EngineRun(Path(tempfile.mkdtemp(prefix="soak")), instance=f"soak{os.getpid()}",
                       **engine_overrides(args, listen_only))
    print(f"starting the engine (log: {engine.log_path}) ...", flush=True)
    callers: CallerProcs | None = None
    watch: EngineWatch | None = None
    killer: Killer | None = None
    try:
        try:
            engine.wait_healthy(args.start_timeout)
        except AssertionError as exc:
            print(f"error: the engine did not start:\n{str(exc)[-3000:]}", file=sys.stderr)
            return 2
        watch = EngineWatch(functools.partial(engine.health, timeout=1.0), engine.proc.pid, args.sample_every)
        watch.start()
        lines = plan_lines(args.profile, args.callers, args.duration, args.seed)
        n_procs = args.caller_procs or max(1, -(-args.callers // CALLERS_PER_PROC))
        common = {"base_url": f"http://127.0.0.1:{engine.port}", "public_url": PUBLIC, "auth_token": AUTH,
                  "mix": mix, "timeouts": Timeouts(listen_s=args.listen_s), "expect_greeting": not listen_only}
        print("one warm-up call ...", flush=True)
        warm = warm_up(engine.port, listen_only)
        if warm["outcome"] != "ok":
            print(f"error: the warm-up call failed: {warm['reason']}", file=sys.stderr)
            return 2
        watch.paused.set()
        time.sleep(1.0)
        before = settled_snapshot(engine)
        watch.paused.clear()
        resource_tracker.ensure_running()  # multiprocessing's one pipe for the process's life: not ours to count
        own_fds_at_start = fd_count(os.getpid())
        callers = CallerProcs(lines, n_procs, common)
        print(f"{n_procs} caller process(es) synthesising the callers' voices ...", flush=True)
        callers.wait_ready(120)
        t0 = time.monotonic() + 0.5
        callers.tell({"t0": t0})
        print(f"{args.callers} caller lines, {args.profile}, {args.duration:g} s; mix {args.mix}", flush=True)
        killer = Killer(watch, kill, args.every, t0, t0 + args.duration, lambda m: print(f"\n  {m}", flush=True)) \
            if kill else None
        if killer is not None:
            killer.start()
        errors: list[str] = []
        records = collect(callers, n_procs, t0, args.duration, watch, killer, errors)
        if killer is not None:
            killer.stop()
        settle_until = time.monotonic() + 15
        while time.monotonic() < settle_until and (not watch.poll() or watch.calls_active):
            time.sleep(0.5)
        watch.poll()
        watch.stop()
        time.sleep(1.0)
        after = settled_snapshot(engine)
        callers.close()
        callers = None
        rc = engine.stop()
        time.sleep(0.5)
        stopped = snapshot(engine)
        stopped.update(supervisor_exit=rc, own_fds_at_start=own_fds_at_start)
        run = {"callers": args.callers, "duration_s": args.duration, "profile": args.profile, "mix": args.mix,
               "seed": args.seed, "caller_procs": n_procs, "kill": kill, "kill_every_s": args.every,
               "config": args.config or "embedded default", "wall_s": round(time.monotonic() - t0, 1),
               "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        report = summarize(records, watch.ended, killer.kills if killer else [], watch.samples, before, after,
                           stopped, t0, run, args.max_v2v_p95_ms, args.max_late_fraction)
        report["checks"]["engine_stopped_cleanly"] = rc == 0
        report["checks"]["caller_processes_ran_clean"] = not errors
        report["caller_errors"] = errors
        print()
        print(table(report))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=1))
            print(f"report: {args.json}")
        return 0 if all(report["checks"].values()) else 1
    finally:
        if killer is not None:
            killer.stop()
        if watch is not None:
            watch.stop()
        if callers is not None:
            callers.close()
        engine.kill_everything()  # its log stays in its work dir, for a look after a failure


def unfinished(start: dict[str, Any]) -> dict[str, Any]:
    """The record of a call its caller never finished (still up at the deadline, or its process died)."""
    return {"script": start["script"], "call_sid": start["call_sid"], "slot": start["slot"], "t_dial": start["t"],
            "t_end": time.monotonic(), "outcome": "unfinished", "reason": "the call never finished",
            "voice_to_voice_ms": [], "barge_in_ms": [], "dtmf_reply_ms": [], "barge_in_missed": 0,
            "frames_sent": 0, "sent_runs": [], "media_received": 0, "underruns": 0, "underrun_ms": 0.0,
            "duplicate_marks": 0, "sent_late": 0, "max_send_lag_ms": 0.0}


def collect(callers: CallerProcs, n_procs: int, t0: float, duration_s: float, watch: EngineWatch,
            killer: Killer | None, errors: list[str]) -> list[dict[str, Any]]:
    """Every call record, showing progress, until each caller process is done; caller process errors go
    to `errors`."""
    records: list[dict[str, Any]] = []
    in_call: dict[str, dict[str, Any]] = {}
    done = 0
    progress = Progress(t0, duration_s)
    deadline = t0 + duration_s + SETTLE_S + Timeouts().talk_s
    while done < n_procs and callers.connected:
        event = callers.next_event(0.5)
        if event is not None:
            if event["event"] == "start":
                in_call[event["call_sid"]] = event
            elif event["event"] == "call":
                in_call.pop(event["call_sid"], None)
                records.append(event)
            elif event["event"] == "done":
                done += 1
            elif event["event"] == "error":
                errors.append(event["error"])
                print(f"\nerror in a caller process: {event['error']}", file=sys.stderr)
        progress.show(len(in_call), records, watch, len(killer.kills) if killer else 0)
        if time.monotonic() > deadline:
            print("\nerror: calls still running long after the end; stopping them", file=sys.stderr)
            callers.tell({"stop": True})
            break
    progress.done()
    # Calls still up now never reached an outcome: they are failures, not silently missing.
    records += [unfinished(start) for start in in_call.values()]
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--callers", type=int, default=8, help="concurrent caller lines (default 8)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds the lines place calls (default 60)")
    parser.add_argument("--profile", choices=PROFILES, default="steady")
    parser.add_argument("--mix", default=DEFAULT_MIX,
                        help=f"scripts and weights, of {', '.join(SCRIPTS)} (default {DEFAULT_MIX})")
    parser.add_argument("--kill", default="", help="comma-separated children to SIGKILL in turn: "
                                                   + ", ".join(PROC_NAMES))
    parser.add_argument("--every", type=float, default=0.0, help="seconds between kills")
    parser.add_argument("--json", metavar="OUT", help="write the report as JSON")
    parser.add_argument("--trace", metavar="FILE", help="also write the engine's latency trace")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--caller-procs", type=int, default=0,
                        help=f"caller processes (default: one per {CALLERS_PER_PROC} lines)")
    parser.add_argument("--listen-s", type=float, default=20.0, help="how long a `listen` call stays up")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS/CPU samples")
    parser.add_argument("--max-v2v-p95-ms", type=float, default=3000.0,
                        help="voice-to-voice p95 above this is not 'sustained in real time'")
    parser.add_argument("--max-late-fraction", type=float, default=0.001,
                        help="more late inbound frames, bot-audio stall time or late caller frames than this "
                             "fraction is not 'sustained in real time' (default 0.001)")
    parser.add_argument("--start-timeout", type=float, default=180.0)
    parser.add_argument("--log-level", default="WARNING", help="the engine's log level during the soak")
