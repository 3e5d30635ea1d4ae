"""The soak tool's view of a running engine from outside: /health, /proc and /dev/shm, and SIGKILL on a schedule.

`EngineWatch` polls /health once a second in a thread: which process has which pid and incarnation,
the calls in flight, and the per-call summaries the transport keeps of calls that ended (its side of
the frame ledger). It samples every engine process's RSS and CPU from /proc. `snapshot()` counts what
must not leak: shared-memory segments, file descriptors per process, the supervisor's descendants and
zombies. `Killer` sends SIGKILL to one child every `every_s` seconds while calls are up and times the
supervisor's restart: from the kill to the new incarnation's Ready, as the supervisor stamped it.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipc.schema import PROC_NAMES
from tools.engine_run import EngineRun, instance_pids

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children of all its threads, recursively)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                kids = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for kid in map(int, kids):
                if kid not in found:
                    found.append(kid)
                    stack.append(kid)
    return found


def proc_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of the whole process (all threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_mb(pid: int) -> float | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE / 2**20
    except (OSError, IndexError):
        return None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def role(pid: int, supervisor_pid: int) -> str:
    """`supervisor`, a child's name (from its kernel name, eng-<proc>), or `other:<comm>` (e.g. a model's
    helper process)."""
    if pid == supervisor_pid:
        return "supervisor"
    name = proc_name(pid)
    return name.removeprefix("eng-") if name.startswith("eng-") else f"other:{name}"


def settled_snapshot(engine: EngineRun, samples: int = 3) -> dict[str, Any]:
    """`snapshot`, with each process's fds at their fewest over a few samples half a second apart: a request or
    a socket closing at that instant is not a leak, and a leak is there in every sample."""
    shots = []
    for i in range(samples):
        if i:
            time.sleep(0.5)
        shots.append(snapshot(engine))
    last = shots[-1]
    for name in last["fds"]:
        counts = [s["fds"].get(name) for s in shots if s["fds"].get(name) is not None]
        last["fds"][name] = min(counts) if counts else None
    return last


def snapshot(engine: EngineRun) -> dict[str, Any]:
    """What must come back to where it was: segments, fds per process, processes, sockets."""
    supervisor = engine.proc.pid
    pids = [supervisor, *descendants(supervisor)] if proc_state(supervisor) != "gone" else []
    pids += [pid for pid in instance_pids(engine.instance) if pid not in pids and proc_state(pid) != "Z"]
    return {
        "t": time.monotonic(),
        "shm_segments": engine.segments(),
        "processes": len(pids),
        "zombies": sum(1 for pid in pids if proc_state(pid) == "Z"),
        "fds": {role(pid, supervisor): fd_count(pid) for pid in pids},
        "runtime_dirs": [d.name for d in engine.socket_dirs()],
        "own_fds": fd_count(os.getpid()),
    }


class EngineWatch:
    """Polls the engine's /health and /proc in a thread; everything it learns is read under `lock`."""

    def __init__(self, health: Callable[[], tuple[int, dict[str, Any]] | None], supervisor_pid: int,
                 sample_every_s: float = 5.0) -> None:
        self._health = health  # EngineRun.health: (status, body), or None while nothing answers
        self.supervisor_pid = supervisor_pid
        self.sample_every_s = sample_every_s
        self.lock = threading.Lock()
        self.procs: dict[str, dict[str, Any]] = {}  # name -> the supervisor's ProcState, as JSON
        self.calls_active = 0
        self.health_ok_at: float | None = None
        self.ended: dict[str, dict[str, Any]] = {}  # call_id -> the transport's summary
        self.samples: list[dict[str, Any]] = []  # per process RSS and CPU over time
        self.health_failures = 0
        self._cpu_last: dict[int, tuple[float, float]] = {}
        self.paused = threading.Event()  # set: no polling (while fds are counted)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def poll(self) -> bool:
        answer = self._health()
        body = None if answer is None else answer[1]
        with self.lock:
            if body is None:
                self.health_failures += 1
                return False
            self.health_ok_at = time.monotonic()
            self.procs = body.get("processes", {})
            self.calls_active = body.get("calls_active", 0)
            for summary in body.get("transport", {}).get("ended", []):
                self.ended.setdefault(summary["call_id"], summary)
        return True

    def sample(self) -> dict[str, Any]:
        """RSS (MiB) and CPU (% of one core since the previous sample) of every engine process, by role."""
        now = time.monotonic()
        row: dict[str, Any] = {"t": now, "procs": {}}
        for pid in [self.supervisor_pid, *descendants(self.supervisor_pid)]:
            cpu, rss = cpu_seconds(pid), rss_mb(pid)
            if cpu is None or rss is None:
                continue
            last = self._cpu_last.get(pid)
            self._cpu_last[pid] = (now, cpu)
            pct = None if last is None or now <= last[0] else round(100 * (cpu - last[1]) / (now - last[0]), 1)
            name = role(pid, self.supervisor_pid)
            row["procs"][name] = {"pid": pid, "rss_mb": round(rss, 1), "cpu_pct": pct}
        return row

    def _run(self) -> None:
        next_sample = 0.0
        while not self._stop.is_set():
            if self.paused.is_set():
                self._stop.wait(0.2)
                continue
            self.poll()
            if time.monotonic() >= next_sample:
                row = self.sample()
                with self.lock:
                    self.samples.append(row)
                next_sample = time.monotonic() + self.sample_every_s
            self._stop.wait(1.0)


class Killer:
    """SIGKILL one engine child every `every_s` seconds, round-robin over `targets`, while calls are up."""

    def __init__(self, watch: EngineWatch, targets: list[str], every_s: float, t0: float, until: float,
                 log: Any) -> None:
        for target in targets:
            if target not in PROC_NAMES:
                raise ValueError(f"cannot kill {target!r}: one of {', '.join(PROC_NAMES)}")
        self.watch, self.targets, self.every_s = watch, targets, every_s
        self.t0, self.until, self.log = t0, until, log
        self.kills: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        # Planned up front: a slow restart delays the next kill, never drops it.
        n = max(0, math.ceil((self.until - self.t0) / self.every_s) - 1)
        for k in range(n):
            if self._stop.wait(max(0.0, self.t0 + (k + 1) * self.every_s - time.monotonic())):
                return
            self.kills.append(self._kill_one(self.targets[k % len(self.targets)]))

    def _kill_one(self, target: str) -> dict[str, Any]:
        w = self.watch
        deadline = time.monotonic() + self.every_s / 2
        while w.calls_active == 0 and time.monotonic() < deadline:  # mid-call, if any call is up
            time.sleep(0.1)
        w.poll()
        with w.lock:
            before = dict(w.procs.get(target, {}))
            calls = w.calls_active
        pid = before.get("pid")
        kill: dict[str, Any] = {"target": target, "pid": pid, "calls_active": calls,
                                "incarnation": before.get("incarnation")}
        if pid is None or before.get("state") != "ready":
            kill.update(at=time.monotonic(), skipped=f"{target} was not ready ({before.get('state')})")
            self.log(f"kill {target}: skipped, not ready")
            return kill
        at_ns = time.monotonic_ns()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            kill.update(at=at_ns / 1e9, skipped="already gone")
            return kill
        kill["at"] = at_ns / 1e9
        self.log(f"killed {target} (pid {pid}) with {calls} calls up")
        end = time.monotonic() + 120
        while time.monotonic() < end and not self._stop.is_set():
            w.poll()
            with w.lock:
                now = dict(w.procs.get(target, {}))
            if now.get("state") == "ready" and now.get("incarnation", 0) > before["incarnation"] \
                    and now.get("ready_t_ns"):
                kill["restart_s"] = round((now["ready_t_ns"] - at_ns) / 1e9, 3)
                kill["new_pid"] = now.get("pid")
                self.log(f"{target} back after {kill['restart_s']:.2f} s (pid {now.get('pid')})")
                return kill
            time.sleep(0.05)
        kill["restart_s"] = None
        self.log(f"{target} did not come back within 120 s")
        return kill
