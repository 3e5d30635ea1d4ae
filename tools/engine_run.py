"""Run the real engine (`python -m engine supervisor`) as a subprocess, and look at it from outside.

Tests, benchmarks, the soak tool and the installed-package check start their engines with it: each gets its
own instance name (so its shared memory can be told apart and checked for leaks), port and runtime dir. The
engine is this interpreter's: `python -m engine` finds the installed package (a wheel, or a checkout's
editable install) from any directory, so nothing here knows where a repository is.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ipc.shm import unlink_segment
from tools.solo import free_port

_counter = itertools.count()


def unique_instance() -> str:
    """An engine instance name no other engine (test, benchmark or soak run) on this host uses."""
    return f"t{os.getpid()}x{next(_counter)}"


def instance_pids(instance: str) -> list[int]:
    """Every process started for this engine instance, wherever it was re-parented (an orphaned child of a
    supervisor that is gone is no longer its descendant): each carries the instance in its environment."""
    marker = f"ENGINE_ENGINE__INSTANCE={instance}\0"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_text(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def serve(run: EngineRun, start_timeout: float = 120.0) -> Iterator[EngineRun]:
    """The body of a module fixture (`yield from serve(EngineRun(...))`): wait until healthy, hand the engine
    over, then require a clean stop that leaves no shared memory; nothing of the run survives either way."""
    try:
        run.wait_healthy(timeout=start_timeout)
        yield run
        assert run.stop() == 0
        assert run.segments() == []
    finally:
        run.kill_everything()


def shm_entries(prefix: str) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(prefix))


def pid_exists(pid: int) -> bool:
    """Alive, or a zombie some parent of ours should have reaped. An orphan's zombie (re-parented
    to an init that may not reap, e.g. pytest as a container's PID 1) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return not (state == "Z" and int(ppid) != os.getpid())


class EngineRun:
    """One supervisor with its own instance name, port and runtime dir."""

    def __init__(self, tmp_path: Path, **overrides: str) -> None:
        self.instance = overrides.pop("instance", "") or unique_instance()
        self.port = free_port()
        # Unix socket paths are short: keep the runtime dir out of pytest's long tmp paths.
        given_base = overrides.pop("runtime_base", "")
        self.runtime_base = Path(given_base or tempfile.mkdtemp(prefix="eng", dir="/tmp"))
        self.log_path = tmp_path / f"{self.instance}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
        env.update({
            "ENGINE_ENGINE__INSTANCE": self.instance,
            "ENGINE_ENGINE__RUNTIME_DIR": str(self.runtime_base),
            "ENGINE_ENGINE__MAX_CALLS": "4",
            "ENGINE_TRANSPORT__HOST": "127.0.0.1",
            "ENGINE_TRANSPORT__PORT": str(self.port),
            "ENGINE_SUPERVISOR__HEARTBEAT_INTERVAL_S": "0.2",
            "ENGINE_SUPERVISOR__DRAIN_TIMEOUT_S": "5",
        })
        env.update(overrides)
        self._log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "engine", "supervisor"], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def health(self, timeout: float = 2.0) -> tuple[int, dict[str, Any]] | None:
        """The HTTP status and body of /health; None while nothing sensible answers (a transport that is
        starting, restarting or was just killed)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read())
            except (OSError, ValueError):
                return None
        except (OSError, ValueError):  # refused, reset, timed out, or cut off mid-body
            return None

    def wait_healthy(self, timeout: float = 60.0, *, unless: Any = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"supervisor exited ({self.proc.returncode}):\n{self.log}"
            last = self.health()
            if last is not None and last[0] == 200 and (unless is None or not unless(last[1])):
                return last[1]
            time.sleep(0.05)
        raise AssertionError(f"engine not healthy after {timeout} s; last /health: {last}\n{self.log}")

    def child_pids(self, body: dict[str, Any]) -> dict[str, int]:
        return {name: p["pid"] for name, p in body["processes"].items()}

    def segments(self) -> list[str]:
        return shm_entries(f"{self.instance}-")

    def socket_dirs(self) -> list[Path]:
        return sorted(self.runtime_base.glob(f"{self.instance}-*"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill_everything(self) -> None:
        """Last-resort cleanup for a failed test: no process of this run survives it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in instance_pids(self.instance):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for name in self.segments():  # a run killed outright never unlinked its shared memory: a failed test's
            unlink_segment(name)      # run would leave it in /dev/shm
        if not self._log.closed:
            self._log.close()
        shutil.rmtree(self.runtime_base, ignore_errors=True)
