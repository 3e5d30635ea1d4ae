"""The real transport process, spawned alone; the test plays supervisor, speech, llm and tts.

The test owns the ring pool and binds the peers' bus sockets, so it can read what
the transport writes into inbound rings, write bot audio into outbound rings,
and see every CallStarted / CallEnded the transport publishes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from engine.config import load_config
from ipc.bus import Bus
from ipc.pool import RingPool
from ipc.schema import AnyMsg, CallStarted, Ready, RunInfo
from tests.engine_run import free_port
from tests.shm_helpers import unique_instance

AUTH_TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC_URL = "https://voice.example.test"


class TransportHarness:
    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.instance = unique_instance()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="engt", dir="/tmp"))
        self.recordings = tmp_path / "recordings"
        self.cfg = load_config(environ={
            "ENGINE_ENGINE__INSTANCE": self.instance,
            "ENGINE_ENGINE__MAX_CALLS": "4",
            "ENGINE_TRANSPORT__HOST": "127.0.0.1",
            "ENGINE_TRANSPORT__PORT": str(self.port),
            "ENGINE_TRANSPORT__PUBLIC_URL": PUBLIC_URL,
            "ENGINE_TRANSPORT__STREAM_SECRET": "harness-secret-0123456789abcdef",
            "ENGINE_TRANSPORT__RECORDINGS_DIR": str(self.recordings),
            "ENGINE_TWILIO__AUTH_TOKEN": AUTH_TOKEN,
            "ENGINE_SUPERVISOR__HEARTBEAT_INTERVAL_S": "0.2",
            **env,
        })
        self.pool = RingPool.create(f"{self.instance}-{os.getpid()}-pool", self.cfg.engine.max_calls,
                                    self.cfg.ring.slots, self.cfg.ring.frame_bytes)
        self.buses = {name: Bus(self.runtime_dir, name) for name in ("supervisor", "speech", "llm", "tts")}
        run = RunInfo(proc="transport", incarnation=1, supervisor_pid=os.getpid(), pool_name=self.pool.segment.name,
                      runtime_dir=str(self.runtime_dir))
        from engine.supervisor import _child_entry

        self.process = mp.get_context("spawn").Process(
            target=_child_entry, args=("procs.transport", self.cfg.to_bytes(), run.to_bytes()))
        self.process.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = self.buses["supervisor"].recv(0.2)
            if isinstance(msg, Ready):
                return
            if not self.process.is_alive():
                break
        self.close()
        raise RuntimeError("transport did not become ready")

    def next_message(self, peer: str, kind: type, timeout: float = 10.0) -> Any:
        """The next message of type `kind` on a peer's bus, skipping others."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg: AnyMsg | None = self.buses[peer].recv(0.1)
            if isinstance(msg, kind):
                return msg
        raise AssertionError(f"no {kind.__name__} for {peer} within {timeout} s")

    def call_started(self, timeout: float = 10.0) -> CallStarted:
        started: CallStarted = self.next_message("speech", CallStarted, timeout)
        return started

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def close(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        for bus in self.buses.values():
            bus.close()
        self.pool.close()
        self.pool.unlink()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
