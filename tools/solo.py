"""One real engine child process, spawned alone; the caller owns the ring pool and plays every other process.

For tests and benchmarks that exercise one process for real (transport, speech, llm or tts)
without a supervisor: this process creates the pool, binds the bus sockets of the supervisor
and of the other children, so it sees everything the child sends and can send it anything.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import shutil
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.config_load import load_config
from ipc.bus import Bus
from ipc.pool import Lease, RingPool
from ipc.schema import PROC_NAMES, AnyMsg, CallEnded, CallStarted, Heartbeat, ProcName, Ready, RunInfo
from procs.supervisor import CHILD_MAINS

_instances = itertools.count()


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SoloChild:
    def __init__(self, proc: ProcName, env: dict[str, str] | None = None, ready_timeout: float = 120.0) -> None:
        self.proc = proc
        self.instance = f"solo{os.getpid()}x{next(_instances)}"
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="engs", dir="/tmp"))
        self.buses: dict[str, Bus] = {}
        self.process: BaseProcess | None = None
        self._closed = False
        try:
            self.cfg: Config = load_config(environ={"ENGINE_ENGINE__INSTANCE": self.instance,
                                                    "ENGINE_ENGINE__MAX_CALLS": "4", **(env or {})})
            self.pool = RingPool.create(f"{self.instance}-{os.getpid()}-pool", self.cfg.engine.max_calls,
                                        self.cfg.ring.slots, self.cfg.ring.frame_bytes)
        except BaseException:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            raise
        try:
            self.buses = {name: Bus(self.runtime_dir, name) for name in ("supervisor", *PROC_NAMES) if name != proc}
            run = RunInfo(proc=proc, incarnation=1, supervisor_pid=os.getpid(), pool_name=self.pool.segment.name,
                          runtime_dir=str(self.runtime_dir))
            self.process = mp.get_context("spawn").Process(
                target=CHILD_MAINS[proc], args=(self.cfg.to_bytes(), run.to_bytes()), name=proc)
            self.process.start()
            deadline = time.monotonic() + ready_timeout
            while time.monotonic() < deadline and self.process.is_alive():
                if isinstance(self.buses["supervisor"].recv(0.2), Ready):
                    return
            raise RuntimeError(f"{proc} did not become ready (exit code {self.process.exitcode})")
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.pid is not None
        return self.process.pid

    def send(self, msg: Any, sender: str = "supervisor") -> None:
        self.buses[sender].send(self.proc, msg)

    def messages(self, peer: str, kind: type, seconds: float) -> list[Any]:
        """Every message of type `kind` that reaches `peer` within `seconds`."""
        out: list[Any] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            msg: AnyMsg | None = self.buses[peer].recv(min(left, 0.1))
            if isinstance(msg, kind):
                out.append(msg)
        return out

    def wait_for(self, peer: str, kind: type, timeout: float, predicate: Any = None) -> Any:
        """The next message of type `kind` (matching `predicate`, if given) on `peer`'s bus; others are skipped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg: AnyMsg | None = self.buses[peer].recv(0.1)
            if isinstance(msg, kind) and (predicate is None or predicate(msg)):
                return msg
        raise AssertionError(f"no {kind.__name__} for {peer} within {timeout} s")

    def start_call(self, call_id: str, inbound_rate: int = 16000) -> Lease:
        """Lease a ring pair as the transport does and tell the child; returns once its heartbeat counts the call,
        so a test may send the call's messages from any peer's bus (only one sender's messages keep their order)."""
        lease = self.pool.lease(call_id)
        if lease is None:
            raise RuntimeError(f"no free ring pair for {call_id}")
        live = len(self.pool.leases())
        self.send(CallStarted(call_id=call_id, slot=lease.slot, epoch=lease.epoch, inbound_rate=inbound_rate),
                  "transport")
        self.wait_for("supervisor", Heartbeat, 10, lambda m: m.stats.get("calls", 0) >= live)
        return lease

    def end_call(self, lease: Lease, reason: str = "test") -> None:
        """End a call started with `start_call`: once the child has let it go, release its ring pair."""
        left = len(self.pool.leases()) - 1
        self.send(CallEnded(call_id=lease.call_id, slot=lease.slot, epoch=lease.epoch, reason=reason), "transport")
        self.wait_for("supervisor", Heartbeat, 10, lambda m: m.stats.get("calls") == left)
        self.pool.release(lease)

    def close(self) -> None:
        """Stop the process, close the buses, unlink the shared memory. Safe on a half-built instance, and twice."""
        if self._closed:
            return
        self._closed = True
        if self.process is not None and self.process.pid is not None:
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(15)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        for bus in self.buses.values():
            bus.close()
        self.buses = {}
        try:
            self.pool.unlink()  # first: should closing fail on a view still open, nothing is left behind
        finally:
            self.pool.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
