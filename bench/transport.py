"""How many concurrent phone calls one transport process carries at real-time pace, with no audio lost.

Three kinds of process, so the load generator and the measurement never share an event loop:

  transport  the real `procs.transport`, spawned the way the supervisor spawns it (as
             tools/solo.py does for tests), with recordings off
  callers    one or more processes of `tools.caller.SyntheticCaller`s: each call streams a
             tone at real-time pace (20 ms μ-law frames, `continuous=True` as a phone line)
             and plays the bot audio it receives the way Twilio does
  bench      this process: owns the ring pool and the peers' bus sockets and plays the
             speech and TTS processes in a thread: for every `CallStarted` it drains the
             call's inbound ring (counting frames, checking sequence continuity and ring
             drops) and feeds its outbound ring a continuous 22050 Hz tone in 20 ms frames
             on an absolute schedule, `BOT_AHEAD_S` ahead of real time as a TTS would be

The number of callers steps upward. Each step dials N calls, lets them run `--warmup-seconds`,
then measures for `--step-seconds`, then hangs them all up. A step sustains when every call
connected and stayed up, every inbound frame a caller sent reached the ring in order with no
ring drop, no caller's playback starved after its first audio (simulated from the arrival times
of the bot's media messages: a frame that arrives after everything before it has played is an
underrun), no inbound frame took longer than the transport's outbound lead (200 ms) from the
caller's send to the ring, the callers themselves sent on time (else the generator, not the
transport, is what was measured), and the transport's inbound handling p99 stayed under 5 ms.

The per-frame handling times come from the transport's /health (the last 5000 frames each way,
looked at every few seconds and at the end of the step). They leave out the time a message waits
for the event loop; the caller-to-ring latency does not, and is what grows once the loop is busy.

CPU: transport, caller and bench processes from /proc/<pid>/stat (utime + stime, all threads)
and the whole box from /proc/stat, over the measured window. On a small box all three kinds of
process share the cores: read the CPU columns (and `other`, whatever else ran meanwhile) before
blaming the transport for a failed step. `--silent-doorbell` is an A/B: bot audio is written
without waking the transport's outbound-doorbell thread, which otherwise wakes once per frame.

Run from the repository root (about 5 minutes with the defaults on a 2-core box):

    python bench/transport.py                    # steps until one fails; writes bench/results/transport.json
    python bench/transport.py --quick            # smoke test: 1 and 5 callers, 5 s each
    python bench/transport.py --steps 40 60 --step-seconds 30 --caller-procs 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import json
import multiprocessing as mp
import os
import platform
import signal
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# As bench/ipc.py does: `python bench/transport.py` puts bench/ first on sys.path; resolve
# imports (here and in the spawned caller processes) from the repository root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from engine.codec import StreamResampler  # noqa: E402
from ipc.bus import Bus  # noqa: E402
from ipc.futex import Doorbell  # noqa: E402
from ipc.pool import RingPool  # noqa: E402
from ipc.ring import Ring, RingReader, RingWriter  # noqa: E402
from ipc.schema import CallEnded, CallStarted  # noqa: E402
from tools.caller import CallerError, SyntheticCaller  # noqa: E402
from tools.solo import SoloChild, free_port  # noqa: E402

AUTH_TOKEN = "bench-auth-token-0123456789abcdef"
PUBLIC_URL = "https://voice.bench.test"
CALLER_RATE = 8000
FRAME_S = 0.02
BOT_RATE = 22050
# More than the transport's 200 ms lead, so what Twilio's buffer holds is set by the transport's
# pacer (the thing under test), not by how far ahead this stand-in TTS happens to write.
BOT_AHEAD_S = 0.3
RING_BACKLOG_MAX = 16  # frames: a TTS does not write further ahead than the transport reads
TICK_S = 0.01  # the ring side's poll period: 10 ms keeps a 64-slot ring far from full
INBOUND_P99_LIMIT_US = 5000.0
HEALTH_EVERY_S = 4.0
DEFAULT_STEPS = (1, 5, 10, 20, 30, 40, 60, 80, 100, 120, 140, 160, 200)
F64 = npt.NDArray[np.float64]


# --- the transport process ---------------------------------------------------------------------

class TransportUnderTest(SoloChild):
    """The real transport process; this process owns its ring pool and plays its peers (tools/solo.py)."""

    def __init__(self, max_calls: int, log_level: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        super().__init__("transport", {
            "ENGINE_ENGINE__MAX_CALLS": str(max_calls),
            "ENGINE_ENGINE__LOG_LEVEL": log_level,
            "ENGINE_TRANSPORT__HOST": "127.0.0.1",
            "ENGINE_TRANSPORT__PORT": str(self.port),
            "ENGINE_TRANSPORT__PUBLIC_URL": PUBLIC_URL,
            "ENGINE_TRANSPORT__STREAM_SECRET": "bench-secret-0123456789abcdef",
            "ENGINE_TRANSPORT__RECORDINGS_DIR": "",
            "ENGINE_TWILIO__AUTH_TOKEN": AUTH_TOKEN,
            "ENGINE_SUPERVISOR__HEARTBEAT_INTERVAL_S": "0.5",
        }, ready_timeout=60)

    def health(self) -> dict[str, Any]:
        """/health as JSON (503 is expected: no supervisor sends it process states)."""
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=10) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            body = e.read()
        doc: dict[str, Any] = json.loads(body)
        return doc


# --- the speech and TTS side: rings --------------------------------------------------------------

def _tone(rate: int, samples: int, hz: float, amplitude: int) -> npt.NDArray[np.int16]:
    t = np.arange(samples) / rate
    return (np.sin(2 * np.pi * hz * t) * amplitude).astype(np.int16)


# One second of 441 Hz at 22050 Hz is 50 frames and a whole number of cycles: it loops seamlessly.
BOT_FRAMES = [f.tobytes() for f in np.split(_tone(BOT_RATE, BOT_RATE, 441.0, 6000), 50)]


class SilentDoorbell(Doorbell):
    """A doorbell that never rings anyone: for `--silent-doorbell`, no shared memory behind it."""

    def __init__(self) -> None:
        self.wakeups = 0

    def ring(self) -> None:
        pass

    def close(self) -> None:
        pass


class CallLine:
    """One call as the speech and TTS processes see it: its inbound ring drained, its outbound ring fed."""

    def __init__(self, pool: RingPool, started: CallStarted, now: float, silent_doorbell: bool) -> None:
        self.call_id = started.call_id
        self.in_ring: Ring = pool.inbound[started.slot]
        self.out_ring: Ring = pool.outbound[started.slot]
        self.reader = RingReader(self.in_ring, started.epoch)
        # A second view of the outbound ring whose writes wake nobody: the transport then finds the
        # audio by its watcher's 50 ms poll (an A/B for what the per-frame wake-ups cost it).
        self.quiet_ring = Ring(self.out_ring.buf, self.out_ring.base, SilentDoorbell()) if silent_doorbell else None
        self.writer = RingWriter(self.quiet_ring or self.out_ring, started.epoch)
        self.drops_before = self.in_ring.stats().drops  # the ring's counter spans every call it carried
        self.t0 = now
        self.next_frame = 0
        self.in_t_ns: list[int] = []
        self.in_bytes = 0
        self.last_seq: int | None = None
        self.seq_gaps = 0
        self.in_drops = 0
        self.out_frames = 0
        self.out_held = 0
        self.out_refused = 0
        self.ended_reason: str | None = None

    def drain(self) -> None:
        while (frame := self.reader.read()) is not None:
            if self.last_seq is not None and frame.seq != self.last_seq + 1:
                self.seq_gaps += 1
            self.last_seq = frame.seq
            self.in_t_ns.append(frame.t_ns)
            self.in_bytes += len(frame.payload)

    def feed(self, now: float) -> None:
        """Write every bot frame due by now on the absolute schedule; a ring backlog holds the rest back."""
        while self.t0 + self.next_frame * FRAME_S - BOT_AHEAD_S <= now:
            if self.out_ring.available() >= RING_BACKLOG_MAX:
                self.out_held += 1
                return
            if not self.writer.write(BOT_FRAMES[self.next_frame % len(BOT_FRAMES)], BOT_RATE):
                self.out_refused += 1
                return
            self.next_frame += 1
            self.out_frames += 1

    def finish(self, reason: str) -> None:
        self.drain()  # the transport wrote everything before it published CallEnded
        self.in_drops = self.in_ring.stats().drops - self.drops_before
        self.ended_reason = reason
        self.release()

    def release(self) -> None:
        """Close this line's own view of shared memory, if any: the pool cannot be closed under it."""
        if self.quiet_ring is not None:
            self.quiet_ring.close()
            self.quiet_ring = None


class RingSide(threading.Thread):
    """Plays speech, LLM and TTS: follows calls on the bus and keeps every call's rings moving."""

    def __init__(self, pool: RingPool, buses: dict[str, Bus], silent_doorbell: bool) -> None:
        super().__init__(name="ring-side", daemon=True)
        self.pool = pool
        self.silent_doorbell = silent_doorbell
        self.buses = buses  # used by this thread alone from start() on: zmq sockets are not thread-safe
        self.lines: dict[str, CallLine] = {}
        self.ended: dict[str, CallLine] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.error: str | None = None
        self.late_ticks = 0

    def run(self) -> None:
        try:
            next_tick = time.monotonic()
            while not self.halt.is_set():
                self._read_buses()
                now = time.monotonic()
                for line in list(self.lines.values()):
                    line.drain()
                    line.feed(now)
                next_tick += TICK_S
                delay = next_tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:  # behind: carry on from now rather than run a burst of catch-up ticks
                    self.late_ticks += 1
                    next_tick = time.monotonic()
        except BaseException:
            self.error = traceback.format_exc()
        finally:
            for line in self.lines.values():
                line.release()

    def _read_buses(self) -> None:
        while (msg := self.buses["speech"].recv_nowait()) is not None:
            if isinstance(msg, CallStarted):
                self.lines[msg.call_id] = CallLine(self.pool, msg, time.monotonic(), self.silent_doorbell)
            elif isinstance(msg, CallEnded) and (line := self.lines.pop(msg.call_id, None)) is not None:
                line.finish(msg.reason)
                with self.lock:
                    self.ended[msg.call_id] = line
        for name in ("llm", "tts", "supervisor"):  # nobody reads these: keep their queues empty
            while self.buses[name].recv_nowait() is not None:
                pass

    def take_ended(self, call_ids: set[str], timeout_s: float) -> dict[str, CallLine]:
        """The finished lines of these calls, waiting up to `timeout_s` for the last CallEnded."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                if call_ids <= self.ended.keys() or time.monotonic() >= deadline:
                    return {cid: self.ended.pop(cid) for cid in call_ids if cid in self.ended}
            time.sleep(0.05)


# --- the callers ---------------------------------------------------------------------------------

def caller_main(conn: Connection) -> None:
    """A caller process: runs one step at a time for the bench process, until told to quit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the bench process's to handle
    while True:
        cmd = conn.recv()
        if cmd[0] == "quit":
            return
        try:
            result = asyncio.run(_caller_step(conn, cmd[1]))
        except Exception:
            conn.send(("error", traceback.format_exc()))
            continue
        conn.send(("result", result))
        if result["quit"]:
            return


async def _talk(caller: SyntheticCaller, tone: npt.NDArray[np.int16], stop: asyncio.Event) -> None:
    # Short chunks, so a hangup waits at most one chunk instead of cancelling a send half-way.
    while not stop.is_set():
        await caller.send_audio(tone, pace=True)


async def _caller_step(conn: Connection, spec: dict[str, Any]) -> dict[str, Any]:
    """Dial spec['n'] calls, report when all are up, talk until told to hang up, return what each saw."""
    # Each call logs ~100 messages a second; with 60 calls the cyclic GC's full passes over those
    # logs stopped this process for up to 200 ms (measured with gc.callbacks), and a generator that
    # stalls sends late and hears late, which would be blamed on the transport. The logs hold no
    # cycles worth collecting within a step: collect once the step is over instead.
    gc.disable()
    tone = _tone(CALLER_RATE, CALLER_RATE // 5, 300.0, 5000)  # 200 ms: 60 whole cycles, loops cleanly
    callers: list[SyntheticCaller] = []
    failures: list[str] = []
    stop = asyncio.Event()
    talkers: list[asyncio.Task[None]] = []
    try:
        for _ in range(spec["n"]):
            caller = SyntheticCaller(spec["base_url"], public_url=PUBLIC_URL, auth_token=AUTH_TOKEN,
                                     keep_payloads=False)
            try:
                await caller.connect(await caller.dial(), continuous=True)
            except (CallerError, aiohttp.ClientError, OSError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")
                await caller.close()
                continue
            callers.append(caller)
            if spec["audio"] == "tone":
                talkers.append(asyncio.create_task(_talk(caller, tone, stop)))
        conn.send(("connected", time.monotonic(), failures))
        then = (await asyncio.to_thread(conn.recv))[0]  # "hangup", or "quit" (the bench is stopping)
        hangup_at = time.monotonic()
        stop.set()
        await asyncio.gather(*talkers, return_exceptions=True)
        outcomes = await asyncio.gather(*(c.hangup(timeout=10) for c in callers), return_exceptions=True)
        return {"calls": [_caller_record(c, hangup_at) for c in callers], "failures": failures,
                "hangup_errors": [repr(o) for o in outcomes if isinstance(o, BaseException)],
                "quit": then == "quit"}
    finally:
        stop.set()
        for task in talkers:
            task.cancel()
        await asyncio.gather(*talkers, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in callers), return_exceptions=True)
        gc.enable()


def _caller_record(c: SyntheticCaller, hangup_at: float) -> dict[str, Any]:
    # Frames sent after `stop` never reach the ring (the transport stops reading): the line's
    # silence filler can slip one in between `stop` and the close.
    stop_t = next((t for t, d, m in c.events if d == "out" and m.get("event") == "stop"), float("inf"))
    sent = [f for f in c.sent_media if f.t < stop_t]
    return {
        "call_sid": c.call_sid,
        "sent_t": np.array([f.t for f in sent]), "sent_due": np.array([f.due for f in sent]),
        "recv_t": np.array([t for t, _ in c.received_media_times]),
        "recv_bytes": np.array([n for _, n in c.received_media_times]),
        "unexpected": len(c.unexpected), "unexpected_first": [what for _, what in c.unexpected][:3],
        "closed_early": c.closed_at is not None and c.closed_at < hangup_at,
        "close_code": c.close_code, "close_reason": c.close_reason,
    }


# --- measuring -----------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, all its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def box_busy_idle() -> tuple[int, int]:
    """Busy and idle jiffies of the whole machine, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values[:8]) - idle, idle


def playout(recv_t: F64, recv_bytes: F64, start: float, end: float) -> tuple[int, float, float]:
    """Underruns in [start, end), seconds starved, and the most audio ever queued ahead, in seconds.

    Twilio's playback as a clock: each frame plays once the one before it has; a frame that
    arrives after everything before it has played found the queue empty.
    """
    underruns, starved, ahead, play_end = 0, 0.0, 0.0, -1.0
    for t, n in zip(recv_t.tolist(), recv_bytes.tolist(), strict=True):
        if play_end >= 0 and t > play_end and start <= t < end:
            underruns += 1
            starved += t - play_end
        ahead = max(ahead, play_end - t)
        play_end = max(play_end, t) + n / CALLER_RATE
    return underruns, starved, ahead


def resampler_withholds(inbound_rate: int, probe_frames: int = 50) -> tuple[int, int]:
    """Frames and samples the transport's inbound resampler keeps back from the ring: its latency.

    soxr returns nothing for the first 20 ms frame and half a frame for the second, so a call's
    ring holds one frame fewer than the caller sent, and the call's last 20 ms never reach it.
    """
    resampler = StreamResampler(CALLER_RATE, inbound_rate)
    out = [len(resampler.process(np.zeros(CALLER_RATE // 50, np.int16))) for _ in range(probe_frames)]
    return out.index(next(n for n in out if n)), probe_frames * (inbound_rate // 50) - sum(out)


def _pct(values: list[float] | F64, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def analyse_step(window: tuple[float, float], lead_s: float, inbound_rate: int, callers: list[dict[str, Any]],
                 lines: dict[str, CallLine], failures: list[str]) -> dict[str, Any]:
    """Per-step totals over all calls."""
    start, end = window
    held_frames, held_samples = resampler_withholds(inbound_rate)
    frame_samples = inbound_rate // 50
    c: Counter[str] = Counter()
    lat: list[F64] = []
    gen_lag: list[F64] = []
    ahead_max = 0.0
    for rec in callers:
        line = lines.get(rec["call_sid"])
        sent_t, sent_due = rec["sent_t"], rec["sent_due"]
        c["in_sent"] += len(sent_t)
        c["closed_early"] += rec["closed_early"]
        c["unexpected"] += rec["unexpected"]
        in_win = (sent_t >= start) & (sent_t < end)
        c["in_sent_window"] += int(in_win.sum())
        gen_lag.append(sent_t[in_win] - sent_due[in_win])
        u, starved, ahead = playout(rec["recv_t"], rec["recv_bytes"], start, end)
        c["underruns"] += u
        c["starved_ms"] += round(starved * 1000)
        ahead_max = max(ahead_max, ahead)
        c["out_recv"] += len(rec["recv_t"])
        c["out_recv_window"] += int(((rec["recv_t"] >= start) & (rec["recv_t"] < end)).sum())
        if line is None:
            c["calls_unseen"] += 1
            continue
        got = np.array(line.in_t_ns, dtype=np.float64) / 1e9
        c["in_ring"] += len(got)
        want_frames = max(0, len(sent_t) - held_frames)
        short_samples = max(0, len(sent_t) * frame_samples - held_samples) - line.in_bytes // 2
        c["in_lost"] += max(0, want_frames - len(got), -(-short_samples // frame_samples))
        c["in_extra"] += max(0, len(got) - want_frames)
        c["seq_gaps"] += line.seq_gaps
        c["ring_drops"] += line.in_drops
        c["out_written"] += line.out_frames
        c["out_held"] += line.out_held
        c["out_refused"] += line.out_refused
        if len(got) == want_frames:  # frame for frame: the ring's k-th came of the (k + held)-th sent
            matched = in_win[held_frames:]
            lat.append(got[matched] - sent_t[held_frames:][matched])
    lat_all = np.concatenate(lat) if lat else np.zeros(0)
    lag_all = np.concatenate(gen_lag) if gen_lag else np.zeros(0)
    c["in_late"] = int((lat_all > lead_s).sum())
    c["gen_late"] = int((lag_all > lead_s).sum())
    return {"counts": dict(c), "connect_failures": failures,
            "in_latency_ms": {"p50": _ms(_pct(lat_all, 50)), "p99": _ms(_pct(lat_all, 99)),
                              "max": _ms(float(lat_all.max()) if lat_all.size else None)},
            "caller_send_lag_ms": {"p50": _ms(_pct(lag_all, 50)), "p99": _ms(_pct(lag_all, 99)),
                                   "max": _ms(float(lag_all.max()) if lag_all.size else None)},
            "out_queued_ahead_max_ms": round(ahead_max * 1000, 1)}


def _ms(s: float | None) -> float | None:
    return None if s is None else round(s * 1000, 2)


def verdict(n: int, row: dict[str, Any], lead_s: float) -> list[str]:
    """Why a step did not sustain; empty when it did."""
    c, why = row["counts"], []
    if row["connect_failures"]:
        why.append(f"{len(row['connect_failures'])}/{n} calls failed to connect")
    for key, what in (("closed_early", "calls closed early"), ("calls_unseen", "calls never seen on the bus"),
                      ("in_lost", "inbound frames lost"), ("in_extra", "inbound frames extra"),
                      ("seq_gaps", "inbound sequence gaps"), ("ring_drops", "inbound ring drops"),
                      ("underruns", "outbound underruns"), ("unexpected", "unexpected messages at callers"),
                      ("in_late", f"inbound frames > {lead_s * 1000:.0f} ms late"),
                      ("gen_late", f"caller frames sent > {lead_s * 1000:.0f} ms late (generator)")):
        if c.get(key):
            why.append(f"{c[key]} {what}")
    p99 = row["inbound_frame_us_p99_max"]
    if p99 is not None and p99 > INBOUND_P99_LIMIT_US:
        why.append(f"inbound handling p99 {p99:.0f} us > {INBOUND_P99_LIMIT_US:.0f} us")
    return why


# --- one step ------------------------------------------------------------------------------------

class CallerPool:
    """The caller processes, spawned once and reused for every step."""

    def __init__(self, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.conns: list[Connection] = []
        for i in range(count):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=caller_main, args=(theirs,), name=f"callers-{i}", daemon=True)
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(mine)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def expect(self, conn: Connection, kind: str, timeout_s: float) -> tuple[Any, ...]:
        if not conn.poll(timeout_s):
            raise TimeoutError(f"caller process: no {kind!r} within {timeout_s:.0f} s")
        msg: tuple[Any, ...] = conn.recv()
        if msg[0] == "error":
            raise RuntimeError(f"caller process failed:\n{msg[1]}")
        if msg[0] != kind:
            raise RuntimeError(f"caller process sent {msg[0]!r}, expected {kind!r}")
        return msg

    def close(self) -> None:
        """Ask each process to hang up and quit; terminate one that does not within 15 s."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("quit",))
        deadline = time.monotonic() + 15
        for proc, conn in zip(self.procs, self.conns, strict=True):
            while proc.is_alive() and time.monotonic() < deadline:
                # Read what it still sends (a step's result), else it blocks on a full pipe and never exits.
                with contextlib.suppress(OSError, EOFError):
                    if conn.poll(0.1):
                        conn.recv()
            if proc.is_alive():
                proc.terminate()
            proc.join(5)
            conn.close()


def run_step(n: int, args: argparse.Namespace, transport: TransportUnderTest, rings: RingSide,
             callers: CallerPool) -> dict[str, Any]:
    """Dial n calls, warm up, measure, hang up; the step's figures and verdict."""
    lead_s = transport.cfg.transport.outbound_lead_ms / 1000
    shares = [n // len(callers.conns) + (i < n % len(callers.conns)) for i in range(len(callers.conns))]
    for conn, share in zip(callers.conns, shares, strict=True):
        conn.send(("step", {"n": share, "base_url": transport.base_url, "audio": args.caller_audio}))
    connected = [callers.expect(conn, "connected", 60 + n) for conn in callers.conns]
    failures = [f for msg in connected for f in msg[2]]
    start = max(msg[1] for msg in connected) + args.warmup_seconds
    end = start + args.step_seconds
    pids = {"transport": transport.pid, "bench": os.getpid(),
            **{f"callers-{i}": pid for i, pid in enumerate(callers.pids)}}

    time.sleep(max(0.0, start - time.monotonic()))
    cpu0 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
    box0 = box_busy_idle()
    wakeups0 = transport.pool.doorbells["outbound"].wakeups
    in_p99s: list[float] = []
    while (remaining := end - time.monotonic()) > 0:
        time.sleep(min(HEALTH_EVERY_S, remaining))
        if time.monotonic() < end:  # a mid-step look: the p99 must hold all through, not just at the end
            in_p99s.append(transport.health()["transport"]["inbound_frame_us"].get("p99", 0.0))
    cpu1 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
    box1 = box_busy_idle()
    wakeups1 = transport.pool.doorbells["outbound"].wakeups
    elapsed = time.monotonic() - start
    health = transport.health()  # at the end of the window, before anyone hangs up

    for conn in callers.conns:
        conn.send(("hangup",))
    results = [callers.expect(conn, "result", 60)[1] for conn in callers.conns]
    records = [r for res in results for r in res["calls"]]
    lines = rings.take_ended({r["call_sid"] for r in records}, timeout_s=15)
    if rings.error:
        raise RuntimeError(f"ring side failed:\n{rings.error}")

    row = analyse_step((start, end), lead_s, transport.cfg.transport.inbound_rate, records, lines, failures)
    tr = health["transport"]
    in_us, out_us = tr["inbound_frame_us"], tr["outbound_frame_us"]
    in_p99s.append(in_us.get("p99", 0.0))
    cpu_pct = {name: round(100 * (cpu1[name] - cpu0[name]) / elapsed, 1) for name in pids}
    busy, idle = box1[0] - box0[0], box1[1] - box0[1]
    row.update({
        "n": n, "window_s": round(elapsed, 2),
        "cpu_pct": cpu_pct,  # of one core
        "box_cpu_pct": round(100 * busy / max(1, busy + idle), 1),  # of the whole machine
        # Whatever else ran on the box meanwhile (tests, builds), in one-core percent: on a small box
        # it competes with the transport and the callers, so a failed step with a high figure is suspect.
        "other_cpu_pct": round(max(0.0, 100 * busy / max(1, busy + idle) * (os.cpu_count() or 1)
                                   - sum(cpu_pct.values())), 1),
        "transport_cpu_ms_per_call_s": round(10 * cpu_pct["transport"] / n, 3),
        "inbound_frame_us": in_us, "outbound_frame_us": out_us,
        "inbound_frame_us_p99_max": max(in_p99s),
        "transport_counters": tr["counters"], "bus": health.get("bus"),
        "ring_drops_health": {k: health["rings"][k] for k in ("inbound_drops", "outbound_drops")},
        "outbound_doorbell_wakeups_per_s": round((wakeups1 - wakeups0) / elapsed, 1),
        "ring_side_late_ticks": rings.late_ticks,
        "hangup_errors": [e for res in results for e in res["hangup_errors"]][:5],
    })
    row["why_not"] = verdict(n, row, lead_s)
    row["sustained"] = not row["why_not"]
    return row


def bottleneck(row: dict[str, Any]) -> str:
    """A first guess at what gave out in a failed step, from where the CPU went."""
    callers_pct = sum(v for k, v in row["cpu_pct"].items() if k.startswith("callers"))
    guesses = []
    if row["cpu_pct"]["transport"] >= 90:
        guesses.append(f"transport process CPU-bound ({row['cpu_pct']['transport']:.0f}% of its one core)")
    if row["counts"].get("gen_late") or callers_pct >= 90 * (len(row["cpu_pct"]) - 2):
        guesses.append(f"caller generator ({callers_pct:.0f}% CPU, {row['counts'].get('gen_late', 0)} late sends)")
    if row["other_cpu_pct"] >= 30:
        guesses.append(f"other processes on the box ({row['other_cpu_pct']:.0f}% of a core)")
    if row["box_cpu_pct"] >= 90:
        guesses.append(f"the whole box ({row['box_cpu_pct']:.0f}% of {os.cpu_count()} cores)")
    return "; ".join(guesses) or "no CPU limit in sight: see why_not"


# --- output --------------------------------------------------------------------------------------

def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'N':>4} {'ok':>3} {'tr%':>6} {'ms/call/s':>9} {'in us p50/p99':>14} {'out us p50/p99':>15} "
            f"{'in lat ms p50/p99':>18} {'in sent/ring':>15} {'lost':>5} {'out recv':>9} {'undr':>5} "
            f"{'callers%':>9} {'bench%':>7} {'other%':>7} {'box%':>5}  why not")
    print("\ntr% / callers% / bench% / other%: CPU of one core over the window (other: processes not ours);"
          " box%: of the whole machine")
    print("in/out us: transport per-frame handling time from /health at the end of the step;")
    print("in lat: caller send -> inbound ring; out recv: bot media messages the callers received")
    print(head)
    print("-" * len(head))
    for r in rows:
        c = r["counts"]
        callers_pct = sum(v for k, v in r["cpu_pct"].items() if k.startswith("callers"))
        i_us, o_us, lat = r["inbound_frame_us"], r["outbound_frame_us"], r["in_latency_ms"]
        print(f"{r['n']:>4} {'yes' if r['sustained'] else 'NO':>3} {r['cpu_pct']['transport']:>6.1f} "
              f"{r['transport_cpu_ms_per_call_s']:>9.2f} "
              f"{_pair(i_us.get('p50'), i_us.get('p99')):>14} {_pair(o_us.get('p50'), o_us.get('p99')):>15} "
              f"{_pair(lat['p50'], lat['p99']):>18} {c.get('in_sent', 0):>7}/{c.get('in_ring', 0):<7} "
              f"{c.get('in_lost', 0):>5} {c.get('out_recv', 0):>9} {c.get('underruns', 0):>5} "
              f"{callers_pct:>9.1f} {r['cpu_pct']['bench']:>7.1f} {r['other_cpu_pct']:>7.1f} {r['box_cpu_pct']:>5.1f}  "
              f"{'; '.join(r['why_not'])}")


def _pair(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "-"
    return f"{a:.0f}/{b:.0f}" if max(a, b) >= 100 else f"{a:.1f}/{b:.1f}"


def machine_info() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu,
            "python": sys.version.split()[0], "platform": platform.platform(),
            "numpy": np.__version__, "aiohttp": aiohttp.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-callers", type=int, default=200, help="stop stepping past this many calls")
    ap.add_argument("--steps", type=int, nargs="+", help=f"explicit caller counts (default {DEFAULT_STEPS})")
    ap.add_argument("--step-seconds", type=float, default=20.0, help="measured window per step")
    ap.add_argument("--warmup-seconds", type=float, default=3.0, help="after the last call connects, unmeasured")
    ap.add_argument("--caller-procs", type=int, default=1, help="processes the callers are spread over")
    ap.add_argument("--caller-audio", choices=("tone", "silence"), default="tone",
                    help="what callers say; silence is the line filler alone (less generator CPU)")
    ap.add_argument("--silent-doorbell", action="store_true",
                    help="A/B: write bot audio without waking the transport's doorbell watcher thread")
    ap.add_argument("--keep-going", action="store_true", help="run every step even after one fails")
    ap.add_argument("--quick", action="store_true", help="smoke test: steps 1 and 5, 5 s each, 2 s warm-up")
    ap.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                    help="the transport's log level")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "transport.json")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.step_seconds, args.warmup_seconds = [1, 5], 5.0, 2.0
    steps = sorted(set(args.steps or [s for s in DEFAULT_STEPS if s <= args.max_callers]))
    steps = [s for s in steps if s <= args.max_callers]
    if not steps or steps[0] < 1:
        ap.error("no step between 1 and --max-callers")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: no /dev/shm leftovers

    rows: list[dict[str, Any]] = []
    began = time.monotonic()
    transport: TransportUnderTest | None = None
    rings: RingSide | None = None
    callers: CallerPool | None = None
    interrupted = False
    engine_cfg: dict[str, Any] = {}
    try:
        transport = TransportUnderTest(max(steps), args.log_level)
        tcfg = transport.cfg
        engine_cfg.update({"max_calls": tcfg.engine.max_calls, "ring_slots": tcfg.ring.slots,
                           "outbound_lead_ms": tcfg.transport.outbound_lead_ms,
                           "inbound_rate": tcfg.transport.inbound_rate})
        rings = RingSide(transport.pool, transport.buses, args.silent_doorbell)
        rings.start()
        callers = CallerPool(args.caller_procs)
        for n in steps:
            print(f"{n:>4} callers: {args.warmup_seconds:g} s warm-up + {args.step_seconds:g} s ...", flush=True)
            row = run_step(n, args, transport, rings, callers)
            rows.append(row)
            print(f"      {'sustained' if row['sustained'] else 'NOT sustained: ' + '; '.join(row['why_not'])} "
                  f"(transport {row['cpu_pct']['transport']:.0f}% of a core, box {row['box_cpu_pct']:.0f}%)",
                  flush=True)
            if not row["sustained"] and not args.keep_going:
                break
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: cleaning up", file=sys.stderr)
    finally:
        if callers is not None:
            callers.close()
        if rings is not None:
            rings.halt.set()
            rings.join(5)
        if transport is not None:
            transport.close()

    if rows:
        print_table(rows)
    if interrupted or not rows:
        sys.exit(130 if interrupted else 1)  # a partial run does not overwrite the last full result
    ok = [r["n"] for r in rows if r["sustained"]]
    first_fail = next((r["n"] for r in rows if not r["sustained"]), None)
    max_ok = max((n for n in ok if first_fail is None or n < first_fail), default=0)
    failed = next((r for r in rows if not r["sustained"]), None)
    limit = bottleneck(failed) if failed else None
    print(f"\nmax sustained: {max_ok} concurrent callers on {os.cpu_count()} cores"
          + (f"; first failure at {first_fail}: {limit}" if failed else " (no step failed)"))
    result = {
        "benchmark": "transport capacity: concurrent synthetic Twilio callers, audio both ways at real time",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "steps": steps, "bot_rate": BOT_RATE, "bot_ahead_s": BOT_AHEAD_S,
                   **engine_cfg, "inbound_p99_limit_us": INBOUND_P99_LIMIT_US},
        "duration_s": round(time.monotonic() - began, 1),
        "max_sustained_callers": max_ok, "first_failed_callers": first_fail, "bottleneck": limit,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['duration_s']} s)")


if __name__ == "__main__":
    main()
