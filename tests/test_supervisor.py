"""The supervisor, run for real: restarts, giving up, clean shutdown, orphaned children."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from ipc.schema import PROC_NAMES as CHILDREN
from tools.engine_run import EngineRun, instance_pids, pid_exists


@pytest.fixture
def engine(tmp_path: Path):
    runs: list[EngineRun] = []

    def start(**overrides: str) -> EngineRun:
        run = EngineRun(tmp_path, **overrides)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill_everything()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def assert_no_leftovers(run: EngineRun, pids: dict[str, int]) -> None:
    wait_for(lambda: not any(pid_exists(p) for p in pids.values()), 10, "children to exit")
    assert run.segments() == [], f"shared memory left behind: {run.segments()}"
    assert run.socket_dirs() == [], f"socket dirs left behind: {run.socket_dirs()}"


@pytest.mark.parametrize("victim", ["speech", "transport"])
def test_sigkilled_child_is_back_within_a_second_and_the_others_never_stopped(engine, victim: str) -> None:
    run = engine()
    body = run.wait_healthy()
    before = run.child_pids(body)
    killed_at_ns = time.monotonic_ns()
    os.kill(before[victim], signal.SIGKILL)
    after = run.wait_healthy(unless=lambda b: b["processes"][victim]["pid"] == before[victim])
    # All stamps are CLOCK_MONOTONIC, shared by every process on the host: no polling error.
    respawned_s = (after["processes"][victim]["started_t_ns"] - killed_at_ns) / 1e9
    ready_s = (after["processes"][victim]["ready_t_ns"] - killed_at_ns) / 1e9
    print(f"{victim} respawned {1000 * respawned_s:.0f} ms and ready {1000 * ready_s:.0f} ms after SIGKILL")
    assert 0 < respawned_s < 1.0  # exit noticed at once and restarted without back-off
    if victim == "transport":  # loads no model: back in about a second (1.04-1.09 s on a slow day of this VM)
        assert ready_s < 3.0  # a bound for a restart gone wrong, not a timing: the time itself is printed
    # speech reloads VAD and Whisper (~0.5 s warm, ~1 s from a cold page cache): its time is printed
    assert after["processes"][victim]["restarts"] == 1
    assert after["processes"][victim]["last_exit"] == "killed by SIGKILL"
    for name in CHILDREN:
        if name != victim:
            assert after["processes"][name]["pid"] == before[name]
            assert after["processes"][name]["restarts"] == 0
    pids = run.child_pids(after)
    assert run.stop() == 0
    assert_no_leftovers(run, pids)


def test_child_crashing_at_start_up_makes_the_supervisor_give_up_clearly(engine) -> None:
    run = engine(ENGINE_FAULTS__CRASH_ON_START='["llm"]', ENGINE_SUPERVISOR__RESTART_INTENSITY="2",
                 ENGINE_SUPERVISOR__RESTART_BACKOFF_BASE_S="0.1")
    code = run.proc.wait(60)
    log = run.log
    assert code == 3, log
    assert "giving up on llm: it failed 3 times within 60 s (last: exit code 1)" in log
    assert "crashing at start-up on purpose" in log
    assert run.segments() == [] and run.socket_dirs() == []


def test_sigterm_drains_and_leaves_nothing_behind(engine) -> None:
    run = engine()
    pids = run.child_pids(run.wait_healthy())
    assert run.stop(signal.SIGTERM) == 0
    # The moment the supervisor has exited, no process of its run is left: not even the resource tracker that
    # spawning started, which would otherwise end a moment later on its own.
    assert instance_pids(run.instance) == []
    log = run.log
    for name in CHILDREN:
        assert f"{name} stopped (exit code 0)" in log
    assert "engine stopped cleanly" in log
    assert_no_leftovers(run, pids)


TRACKER_SCRIPT = """
import multiprocessing, os, sys, time
from procs.process_group import stop_resource_tracker

if __name__ == "__main__":
    mp = multiprocessing.get_context("spawn")
    child = mp.Process(target=time.sleep, args=(float(sys.argv[1]),))
    child.start()  # spawning starts the tracker and hands the child a copy of its fd
    if sys.argv[1] == "0":
        child.join()
    pid = stop_resource_tracker(timeout=0.5)
    try:
        os.kill(pid, 0)
        print(pid, "alive")  # or a zombie: not reaped
    except ProcessLookupError:
        print(pid, "gone")
    print(stop_resource_tracker())  # nothing left to stop
    child.kill()
    child.join()
"""


@pytest.mark.parametrize("child_s", ["0", "30"])
def test_the_resource_tracker_is_ended_and_reaped(tmp_path: Path, child_s: str) -> None:
    """With its children gone, the tracker ends on its own once our fd closes; with a child still holding a
    copy it never would, and is killed after the timeout. Either way it is reaped, not left as a zombie."""
    import subprocess
    import sys

    script = tmp_path / "tracker.py"
    script.write_text(TRACKER_SCRIPT)
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(script), child_s], capture_output=True, text=True, timeout=60,
                         cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, check=True).stdout.split()
    assert out[0].isdigit() and out[1:] == ["gone", "None"], out


def test_sigint_drains_too(engine) -> None:
    run = engine()
    pids = run.child_pids(run.wait_healthy())
    assert run.stop(signal.SIGINT) == 0
    assert_no_leftovers(run, pids)


def test_children_exit_when_the_supervisor_is_sigkilled(engine) -> None:
    run = engine()
    pids = run.child_pids(run.wait_healthy())
    assert run.segments() != []
    run.stop(signal.SIGKILL)
    assert_no_leftovers(run, pids)  # the orphans cleaned up after their supervisor


def test_hung_child_is_detected_by_heartbeat_and_replaced(engine) -> None:
    run = engine(ENGINE_FAULTS__HANG_AFTER_READY='["tts"]', ENGINE_SUPERVISOR__HEARTBEAT_TIMEOUT_S="1.0",
                 ENGINE_SUPERVISOR__READY_TIMEOUT_S="20", ENGINE_SUPERVISOR__RESTART_INTENSITY="100")

    def tts_ready() -> bool:
        h = run.health()
        return h is not None and h[1]["processes"].get("tts", {}).get("state") == "ready"

    wait_for(tts_ready, 60, "tts to come up (it hangs right after)")
    first = run.child_pids(run.health()[1])  # type: ignore[index]
    wait_for(lambda: "tts missed heartbeats" in run.log, 20, "hang detection")
    wait_for(lambda: (h := run.health()) is not None and h[1]["processes"]["tts"]["restarts"] >= 1
             and h[1]["processes"]["tts"]["pid"] != first["tts"], 20, "tts to be restarted")
    assert not pid_exists(first["tts"])
    body = run.health()[1]  # type: ignore[index]
    pids = run.child_pids(body)
    pids["tts_first"] = first["tts"]
    assert run.stop() == 0
    assert_no_leftovers(run, {k: v for k, v in pids.items() if v})


def test_leftovers_of_a_crashed_run_are_swept_at_start_up(engine, tmp_path: Path) -> None:
    from ipc.shm import ShmSegment

    run = engine()
    run.wait_healthy()
    dead_pid = 2**22 + 12345  # above pid_max's default, so never a live process
    stale = ShmSegment.create(f"{run.instance}-{dead_pid}-pool", 4096)
    stale.close()
    stale_dir = run.runtime_base / f"{run.instance}-{dead_pid}"
    stale_dir.mkdir()
    (stale_dir / "speech.data").write_text("")
    pids = run.child_pids(run.wait_healthy())
    assert run.stop() == 0
    wait_for(lambda: not any(pid_exists(p) for p in pids.values()), 10, "children to exit")
    assert run.segments() == [f"{run.instance}-{dead_pid}-pool"]  # a live run never sweeps mid-flight
    second = engine(instance=run.instance, runtime_base=str(run.runtime_base))
    pids = second.child_pids(second.wait_healthy())
    assert "swept leftover of a dead engine run" in second.log
    assert not stale_dir.exists()
    assert second.stop() == 0
    assert_no_leftovers(second, pids)


def test_a_restarted_child_learns_of_calls_already_in_progress(engine) -> None:
    """The pool's lease table is the truth: a new speech process is told about live calls."""
    from ipc.pool import RingPool

    run = engine()
    body = run.wait_healthy()
    (segment,) = run.segments()
    pool = RingPool.attach(segment)
    try:
        lease = pool.lease("CA-in-progress")
        assert lease is not None
        os.kill(body["processes"]["speech"]["pid"], signal.SIGKILL)
        wait_for(lambda: (h := run.health()) is not None
                 and h[1]["processes"]["speech"]["restarts"] == 1 and h[1]["status"] == "ok", 30, "speech restart")
        wait_for(lambda: (h := run.health()) is not None
                 and h[1]["processes"]["speech"]["stats"].get("calls") == 1, 10,
                 "the new speech process to track the call")
        pool.release(lease)
    finally:
        pool.close()
    assert run.stop() == 0

