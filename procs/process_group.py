"""A child's process group: what the child starts ends with it, even when it is killed.

Each child process leads a process group of its own (`lead_own_group`, at start-up),
and whatever it starts joins that group unless it leaves on purpose: vLLM's
engine-core process, multiprocessing's resource tracker. SIGKILL gives a child no
chance to end them, and they are not the supervisor's children, so the supervisor
ends the group (`end_group`) when it sees the child exit, before it reaps the child:
until then the child's pid, which is the group's id, cannot be reused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any


def lead_own_group() -> None:
    """Make this process the leader of a new process group (a no-op for one that leads a session already)."""
    with contextlib.suppress(PermissionError):  # a session leader cannot move, and leads its own group already
        os.setpgid(0, 0)


def end_group(pgid: int) -> bool:
    """SIGKILL every process in group `pgid` (its leader too, if it is alive); False if there is no such group
    (or it is not ours to end)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_resource_tracker(timeout: float = 5.0) -> int | None:
    """End multiprocessing's resource tracker and reap it; its pid, or None if none was running.

    Spawning a child starts the tracker in the parent (the spawn start method hands every child its fd). It
    ends by itself once every copy of that fd is closed, but only some time after its parent has exited:
    a supervisor that has "stopped cleanly" would still leave a process of its run behind for a moment.
    Called last, once the children are gone, it closes our copy, waits for the tracker to see the end
    (at most `timeout`: a copy still held elsewhere would keep it waiting), then kills it if it has not.
    The tracker has nothing to clean for us: `ipc.shm` does not register segments with it.
    """
    from multiprocessing import resource_tracker

    tracker: Any = resource_tracker._resource_tracker  # private: the stdlib offers no way to stop and reap it
    fd, pid = getattr(tracker, "_fd", None), getattr(tracker, "_pid", None)
    if not isinstance(fd, int) or not isinstance(pid, int):
        return None
    tracker._fd = tracker._pid = None
    with contextlib.suppress(OSError):
        os.close(fd)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
    return pid
