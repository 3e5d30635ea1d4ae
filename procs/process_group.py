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
