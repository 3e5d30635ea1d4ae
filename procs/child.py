"""What every child process shares: start-up, signals, parent-death watch, heartbeats, clean exit.

A child is spawned by the supervisor with its config and RunInfo as bytes. It
ignores SIGINT (the supervisor drains it), treats SIGTERM as "stop", and exits by
itself within a second when the supervisor dies, removing the run's shared memory
and sockets on the way out, since no one else is left to do it.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from engine.config import Config
from ipc.bus import Bus
from ipc.pool import RingPool
from ipc.schema import AnyMsg, Heartbeat, ProcName, Ready, RunInfo, Shutdown
from ipc.shm import unlink_segment
from procs.process_group import lead_own_group

log = logging.getLogger("engine.child")

ORPHAN_EXIT_CODE = 70
ORPHAN_GRACE_S = 1.0
_PR_SET_NAME = 15


class StartupFault(RuntimeError):
    """Raised on purpose by `faults.crash_on_start`."""


def setup_logging(level: str, proc: str) -> None:
    logging.basicConfig(
        level=level, stream=sys.stderr, force=True,
        format=f"%(asctime)s %(levelname)-5s [{proc} %(process)d] %(name)s: %(message)s",
    )


def name_process(name: str) -> None:
    """Set the kernel's name for this process (/proc/PID/comm: what `ps`, `top` and the soak tool show; at most
    15 bytes). Every child is a spawned `python`: without this an operator cannot tell speech from tts."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: names are cosmetic
        pass


def bootstrap(proc: str, cfg_bytes: bytes, run_bytes: bytes) -> tuple[Config, RunInfo]:
    cfg = Config.from_bytes(cfg_bytes)
    run = RunInfo.from_bytes(run_bytes)
    lead_own_group()  # what this process starts (vLLM's engine core) is ended with it, even after a SIGKILL
    name_process(f"eng-{proc}")
    setup_logging(cfg.engine.log_level, proc)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if proc == "llm" and cfg.llm.nice:
        # Before any thread exists: the model's threads inherit it. On a shared CPU the reply's later tokens
        # must not hold up its first audio (TTS), the caller's VAD or the pacing of what is already playing.
        os.nice(cfg.llm.nice)
    if proc in cfg.faults.crash_on_start:
        raise StartupFault(f"faults.crash_on_start lists {proc!r}: crashing at start-up on purpose")
    return cfg, run


def cleanup_orphaned_run(run: RunInfo) -> None:
    """The supervisor is gone: remove what it can no longer remove. Idempotent across children."""
    if unlink_segment(run.pool_name):
        log.warning("removed orphaned shared memory %s", run.pool_name)
    shutil.rmtree(run.runtime_dir, ignore_errors=True)


def watch_parent(run: RunInfo, on_death: Callable[[], None]) -> threading.Thread:
    """Call `on_death` when the supervisor exits, then force an exit if the child has not left."""
    parent = multiprocessing.parent_process()

    def watch() -> None:
        if parent is not None:
            multiprocessing.connection.wait([parent.sentinel])
        else:  # not spawned by multiprocessing: fall back to polling our parent pid
            while os.getppid() == run.supervisor_pid:
                time.sleep(0.2)
        log.error("supervisor (pid %d) is gone; exiting", run.supervisor_pid)
        cleanup_orphaned_run(run)
        on_death()
        time.sleep(ORPHAN_GRACE_S)
        os._exit(ORPHAN_EXIT_CODE)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


class SyncChild:
    """Shell for a child whose main loop is a plain thread: speech, llm, tts.

    Subclasses override `setup`, `handle`, `wait_for_work` and `stats`. The main
    loop sends heartbeats itself, so a stuck loop shows up as a missed heartbeat.
    """

    proc: ProcName = "transport"  # every subclass sets its own

    def __init__(self, cfg: Config, run: RunInfo) -> None:
        self.cfg = cfg
        self.run = run
        self.stop = threading.Event()
        self.drain = True
        self.pool: RingPool | None = None
        self.bus: Bus | None = None

    # --- to override ------------------------------------------------------------
    def setup(self) -> None:
        """Attach to rings, load models. Runs before READY is sent."""

    def handle(self, msg: AnyMsg) -> None:
        """A message from the bus other than Shutdown."""

    def wait_for_work(self, timeout_s: float) -> None:
        """Do work that is ready, or wait up to `timeout_s` for some. Default: the bus."""
        assert self.bus is not None
        msg = self.bus.recv(timeout_s)
        if msg is not None:
            self._dispatch(msg)

    def stats(self) -> dict[str, int]:
        return {}

    def teardown(self) -> None:
        """Release what `setup` took (before rings and bus close)."""

    # --- the shell --------------------------------------------------------------
    def _dispatch(self, msg: AnyMsg) -> None:
        if isinstance(msg, Shutdown):
            log.info("shutdown requested: %s", msg.reason)
            self.drain = msg.drain
            self.stop.set()
        else:
            self.handle(msg)

    def poll_bus(self) -> None:
        """Handle every message already waiting (for loops that wait on something else)."""
        assert self.bus is not None
        while (msg := self.bus.recv_nowait()) is not None:
            self._dispatch(msg)

    def main(self) -> None:
        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            self.stop.set()

        signal.signal(signal.SIGTERM, on_sigterm)
        watch_parent(self.run, self.stop.set)
        runtime_dir = Path(self.run.runtime_dir)
        self.pool = RingPool.attach(self.run.pool_name)
        self.bus = Bus(runtime_dir, self.proc)
        try:
            self.setup()
            self.bus.send("supervisor", Ready(proc=self.proc, pid=os.getpid(), incarnation=self.run.incarnation))
            log.info("ready (incarnation %d)", self.run.incarnation)
            if self.proc in self.cfg.faults.hang_after_ready:
                log.error("faults.hang_after_ready lists %r: hanging on purpose", self.proc)
                self.stop.wait()
            interval = self.cfg.supervisor.heartbeat_interval_s
            next_beat = 0.0
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    self.bus.send("supervisor", Heartbeat(proc=self.proc, pid=os.getpid(),
                                                          incarnation=self.run.incarnation, stats=self.stats()))
                    next_beat = now + interval
                self.wait_for_work(max(0.0, next_beat - time.monotonic()))
        finally:
            self.teardown()
            self.bus.close()
            self.pool.close()
            log.info("exited cleanly")


def run_sync_child(cls: type[SyncChild], cfg_bytes: bytes, run_bytes: bytes) -> None:
    cfg, run = bootstrap(cls.proc, cfg_bytes, run_bytes)
    cls(cfg, run).main()
