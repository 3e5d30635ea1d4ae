"""The supervisor: owns the shared memory and the bus, spawns and watches the four children.

Lifecycle of a child: spawned (spawn start method: CUDA must never see a fork)
-> `starting` until it sends Ready (or `ready_timeout_s` passes: killed, counts
as a crash) -> `ready` while heartbeats arrive (none for `heartbeat_timeout_s`:
killed as hung) -> on any unexpected exit, `backoff` then restarted, per
RestartPolicy; too many crashes in a window and the engine gives up loudly.

Exit detection is instant: the supervisor sleeps in one poll over the bus
sockets, every child's process sentinel and a signal wake-up fd. Each child
leads a process group of its own: when it exits, whatever it started and left
behind (vLLM's engine-core process) is killed with it (`procs.process_group`).

SIGINT/SIGTERM: Shutdown(drain) to every child, wait `drain_timeout_s`, SIGKILL
the rest. A second signal skips the wait. On every exit path the ring pool is
unlinked, the socket directory removed and multiprocessing's resource tracker
reaped: once the supervisor has exited, no process of its run is left. At
start-up, leftovers of runs whose supervisor died (even by SIGKILL) are swept.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import zmq

from engine.config import Config
from engine.restart import RestartPolicy
from ipc.bus import Bus
from ipc.pool import RingPool
from ipc.schema import (
    MODEL_PROCS,
    PROC_NAMES,
    CallEnded,
    CallStarted,
    ChildStateName,
    Heartbeat,
    ProcName,
    ProcState,
    Ready,
    RunInfo,
    Shutdown,
    Status,
)
from ipc.shm import segment_name, sweep_dead_runs
from procs import llm, speech, transport, tts
from procs.process_group import end_group, stop_resource_tracker

log = logging.getLogger("engine.supervisor")

ChildMain = Callable[[bytes, bytes], None]
CHILD_MAINS: dict[ProcName, ChildMain] = {
    "transport": transport.main,
    "speech": speech.main,
    "llm": llm.main,
    "tts": tts.main,
}
"""Each child process's entry point, the target to spawn it with: `main(config bytes, RunInfo bytes)`. Spawned, a
child imports only its own module (the spawn start method pickles the function by name)."""

EXIT_OK = 0
EXIT_GAVE_UP = 3


@dataclass
class Child:
    """One child process as the supervisor sees it: its current incarnation, state and restart record."""

    name: ProcName
    policy: RestartPolicy
    process: BaseProcess | None = None
    state: ChildStateName = "stopped"
    incarnation: int = 0
    restarts: int = 0
    last_exit: str | None = None
    started_at: float = 0.0
    ready_at: float = 0.0
    ready_t_ns: int = 0
    started_t_ns: int = 0
    last_heartbeat: float | None = None
    restart_at: float | None = None
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


def describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Owns the run: the ring pool, the bus, the four children; `run()` until stopped or given up."""

    def __init__(self, cfg: Config) -> None:
        if not cfg.transport.stream_secret:
            # Stream tokens must verify in a restarted transport too: one key per engine run.
            cfg.transport.stream_secret = secrets.token_hex(32)
        self.cfg = cfg
        self.pid = os.getpid()
        self.instance = cfg.engine.instance
        self.runtime_dir = cfg.runtime_base / f"{self.instance}-{self.pid}"
        self.pool_name = segment_name(self.instance, self.pid, "pool")
        self.cfg_bytes = cfg.to_bytes()
        self.mp = multiprocessing.get_context("spawn")
        s = cfg.supervisor
        self.children: dict[ProcName, Child] = {
            name: Child(name, RestartPolicy(first_s=s.restart_backoff_first_s, base_s=s.restart_backoff_base_s,
                                            max_s=s.restart_backoff_max_s, intensity=s.restart_intensity,
                                            window_s=s.restart_window_s))
            for name in PROC_NAMES
        }
        self.pool: RingPool | None = None
        self.bus: Bus | None = None
        self.stopping = False
        self.kill_at: float | None = None
        self.gave_up: str | None = None
        self.signals_seen = 0
        self._pending_signals: list[int] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._old_handlers: dict[int, Any] = {}

    # --- lifecycle ---------------------------------------------------------------
    def run(self) -> int:
        try:
            self._install_signals()
            sweep_dead_runs(self.instance, self.cfg.runtime_base)
            self.runtime_dir.mkdir(mode=0o700, parents=True)
            r = self.cfg.ring
            self.pool = RingPool.create(self.pool_name, self.cfg.engine.max_calls, r.slots, r.frame_bytes)
            self.bus = Bus(self.runtime_dir, "supervisor")
            log.info("engine starting: pool %s (%d calls x 2 rings x %d slots), sockets in %s",
                     self.pool_name, self.cfg.engine.max_calls, r.slots, self.runtime_dir)
            for child in self.children.values():
                if self._pending_signals:
                    break  # asked to stop while starting: spawn nothing more
                self._spawn(child)
            self._loop()
        finally:
            self._cleanup()
        if self.gave_up:
            log.critical("engine stopped: %s", self.gave_up)
            return EXIT_GAVE_UP
        log.info("engine stopped cleanly")
        return EXIT_OK

    def _install_signals(self) -> None:
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only note it: logging or sending from a signal handler can re-enter what it interrupted.
        # The wake-up fd gets the main loop out of its poll to act on it.
        self._pending_signals.append(signum)

    def _handle_signals(self) -> None:
        while self._pending_signals:
            name = signal.Signals(self._pending_signals.pop(0)).name
            self.signals_seen += 1
            if not self.stopping:
                log.info("%s received: draining (again to stop at once)", name)
                self.begin_stop(f"{name} received")
            else:
                log.warning("%s received again: stopping at once", name)
                self.kill_at = time.monotonic()

    def begin_stop(self, reason: str, drain: bool = True) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.kill_at = time.monotonic() + (self.cfg.supervisor.drain_timeout_s if drain else 0.0)
        for child in self.children.values():
            child.restart_at = None
            if child.process is not None and child.process.is_alive():
                child.state = "stopping"
                assert self.bus is not None
                self.bus.send(child.name, Shutdown(reason=reason, drain=drain))
            elif child.state != "failed":
                child.state = "stopped"

    def _spawn(self, child: Child) -> None:
        child.incarnation += 1
        run = RunInfo(proc=child.name, incarnation=child.incarnation, supervisor_pid=self.pid,
                      pool_name=self.pool_name, runtime_dir=str(self.runtime_dir))
        process = self.mp.Process(target=CHILD_MAINS[child.name], name=f"engine-{child.name}",
                                  args=(self.cfg_bytes, run.to_bytes()))
        process.start()
        child.process = process
        child.state = "starting"
        child.started_at = time.monotonic()
        child.started_t_ns = time.monotonic_ns()
        child.last_heartbeat = None
        child.restart_at = None
        log.info("spawned %s (pid %d, incarnation %d)", child.name, process.pid, child.incarnation)

    # --- the loop ----------------------------------------------------------------
    def _loop(self) -> None:
        assert self.bus is not None
        interval = self.cfg.supervisor.heartbeat_interval_s
        next_status = 0.0
        while True:
            self._handle_signals()
            now = time.monotonic()
            if self.stopping and all(c.process is None for c in self.children.values()):
                return
            if now >= next_status:
                self._broadcast_status(now)
                next_status = now + interval
            timeout = max(0.0, min(next_status, self._next_deadline(now)) - now)
            poller = zmq.Poller()
            self.bus.register(poller)
            poller.register(self._wake_r.fileno(), zmq.POLLIN)
            sentinels = {c.process.sentinel: c for c in self.children.values() if c.process is not None}
            for fd in sentinels:
                poller.register(fd, zmq.POLLIN)
            events = dict(poller.poll(int(timeout * 1000) + 1))
            if self._wake_r.fileno() in events:
                with contextlib.suppress(BlockingIOError):
                    self._wake_r.recv(4096)
            while (msg := self.bus.recv_nowait()) is not None:
                self._on_message(msg)
            for fd, child in sentinels.items():
                if fd in events:
                    self._on_exit(child)
            self._check_timers(time.monotonic())

    def _next_deadline(self, now: float) -> float:
        deadlines = [now + 1.0]
        if self.kill_at is not None:
            deadlines.append(self.kill_at)
        for c in self.children.values():
            if c.restart_at is not None:
                deadlines.append(c.restart_at)
        return min(deadlines)

    def _on_message(self, msg: Any) -> None:
        if isinstance(msg, Ready | Heartbeat):
            child = self.children.get(msg.proc)
            if child is None or child.pid != msg.pid:
                return  # a message from an incarnation that is already gone
            child.last_heartbeat = time.monotonic()
            if isinstance(msg, Ready) and child.state == "starting":
                child.state = "ready"
                child.ready_at = child.last_heartbeat
                child.ready_t_ns = msg.t_ns
                log.info("%s ready after %.2f s", child.name, child.ready_at - child.started_at)
                if child.name != "transport":
                    self._replay_calls(child.name)
            if isinstance(msg, Heartbeat):
                child.stats = msg.stats

    def _on_exit(self, child: Child) -> None:
        assert child.process is not None
        if child.process.pid is not None:
            end_group(child.process.pid)  # what it started (vLLM's engine core); before reaping: the id is ours
        child.process.join(timeout=1.0)
        code = child.process.exitcode
        pid = child.process.pid
        child.process.close()
        child.process = None
        child.last_exit = describe_exit(code)
        if child.name == "transport" and pid is not None:
            self._reclaim_calls(pid)
        if self.stopping:
            child.state = "stopped"
            log.info("%s stopped (%s)", child.name, child.last_exit)
            return
        delay = child.policy.on_exit(time.monotonic())
        if delay is None:
            child.state = "failed"
            self.gave_up = (f"giving up on {child.name}: it failed {child.policy.recent_exits(time.monotonic())} "
                            f"times within {child.policy.window_s:g} s (last: {child.last_exit}); "
                            f"see its log above")
            log.critical(self.gave_up)
            self.begin_stop(f"{child.name} keeps failing")
            return
        child.state = "backoff"
        child.restart_at = time.monotonic() + delay
        log.error("%s (pid %s) died unexpectedly (%s); restarting in %.2f s", child.name, pid, child.last_exit, delay)

    def _replay_calls(self, name: ProcName) -> None:
        """A (re)started process learns of the calls already in progress."""
        assert self.pool is not None and self.bus is not None
        leases = self.pool.leases()
        for info in leases:
            self.bus.send(name, CallStarted(call_id=info.call_id, slot=info.slot, epoch=info.epoch,
                                            inbound_rate=self.cfg.transport.inbound_rate, live=len(leases)))

    def _reclaim_calls(self, pid: int) -> None:
        """A dead transport cannot end its calls: free their rings and tell the others."""
        assert self.pool is not None and self.bus is not None
        for info in self.pool.reclaim_owner(pid):
            log.warning("call %s lost with the transport; ring pair %d freed", info.call_id, info.slot)
            for name in MODEL_PROCS:
                self.bus.send(name, CallEnded(call_id=info.call_id, slot=info.slot, epoch=info.epoch,
                                              reason="transport died"))

    def _check_timers(self, now: float) -> None:
        s = self.cfg.supervisor
        if self.stopping:
            if self.kill_at is not None and now >= self.kill_at:
                for child in self.children.values():
                    if child.process is not None and child.process.is_alive():
                        log.warning("%s did not stop in time; killing it", child.name)
                        child.process.kill()
                self.kill_at = None
            return
        for child in self.children.values():
            if child.state == "backoff" and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)
            elif child.state == "starting" and now - child.started_at > s.ready_timeout_s:
                log.error("%s not ready after %.0f s; killing it", child.name, s.ready_timeout_s)
                self._kill(child)
            elif (child.state == "ready" and child.last_heartbeat is not None
                  and now - child.last_heartbeat > s.heartbeat_timeout_s):
                log.error("%s missed heartbeats for %.1f s (hung); killing it", child.name,
                          now - child.last_heartbeat)
                self._kill(child)

    def _kill(self, child: Child) -> None:
        if child.process is not None and child.process.is_alive():
            child.process.kill()
        child.state = "stopping"  # the sentinel reports the exit, which restarts it

    def _broadcast_status(self, now: float) -> None:
        assert self.bus is not None
        procs = [
            ProcState(name=c.name, state=c.state, pid=c.pid, incarnation=c.incarnation, restarts=c.restarts,
                      last_exit=c.last_exit, started_t_ns=c.started_t_ns,
                      ready_t_ns=c.ready_t_ns if c.state == "ready" else None,
                      uptime_s=round(now - c.ready_at, 3) if c.state == "ready" else 0.0,
                      heartbeat_age_s=None if c.last_heartbeat is None else round(now - c.last_heartbeat, 3),
                      stats=c.stats)
            for c in self.children.values()
        ]
        self.bus.send("transport", Status(procs=procs, pool=self.pool_name, max_calls=self.cfg.engine.max_calls))

    # --- cleanup, on every path --------------------------------------------------
    def _cleanup(self) -> None:
        """Every step runs even if an earlier one fails: nothing may outlive the supervisor."""
        try:
            for child in self.children.values():
                proc = child.process
                if proc is None:
                    continue
                if proc.is_alive():
                    proc.kill()
                if proc.pid is not None:
                    end_group(proc.pid)
                proc.join(timeout=5.0)
                child.process = None
        finally:
            try:
                if self.pool is not None:
                    self.pool.unlink()  # unlink first: the name goes even if unmapping fails
                    pool, self.pool = self.pool, None
                    pool.close()
            finally:
                try:
                    if self.bus is not None:
                        bus, self.bus = self.bus, None
                        bus.close()
                finally:
                    stop_resource_tracker()  # the children are gone: so is the tracker, before we exit
                    shutil.rmtree(self.runtime_dir, ignore_errors=True)
                    signal.set_wakeup_fd(-1)
                    for sig, handler in self._old_handlers.items():
                        signal.signal(sig, handler)
                    self._wake_r.close()
                    self._wake_w.close()


def run_supervisor(cfg: Config) -> int:
    return Supervisor(cfg).run()
