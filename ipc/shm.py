"""POSIX shared-memory segments owned by one engine run, and the sweep of dead runs' leftovers.

We do not use `multiprocessing.shared_memory.SharedMemory`: on Python < 3.13 every
process that merely attaches registers the segment with a resource tracker, and a
tracker outside the supervisor's family unlinks it when that process exits. Here
the supervisor alone creates and unlinks; children attach and close.

Segment names carry the supervisor's pid (`<instance>-<pid>-<what>`), so a start-up
sweep can tell a crashed run's leftovers from a live engine's segments.
"""

from __future__ import annotations

import _posixshmem
import logging
import mmap
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")


def segment_name(instance: str, supervisor_pid: int, what: str) -> str:
    return f"{instance}-{supervisor_pid}-{what}"


class ShmSegment:
    """A mapped POSIX shared-memory segment. `buf` is a writable memoryview of it."""

    def __init__(self, name: str, size: int, *, create: bool) -> None:
        self.name = name
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if create:
                os.ftruncate(fd, size)
                try:
                    # Reserve the pages now: on a too-small /dev/shm, ftruncate succeeds and the
                    # first write to a missing page kills the process with SIGBUS instead.
                    os.posix_fallocate(fd, 0, size)
                except OSError as exc:
                    raise OSError(exc.errno, f"cannot reserve {size / 2**20:.1f} MiB of shared memory for "
                                             f"{name} in {SHM_DIR}: {exc.strerror}; make /dev/shm larger "
                                             f"(e.g. docker --shm-size) or lower engine.max_calls / "
                                             f"ring.slots / ring.frame_bytes") from None
            else:
                size = os.fstat(fd).st_size
            self._mmap: mmap.mmap | None = mmap.mmap(fd, size)
        except BaseException:
            if create:
                _posixshmem.shm_unlink("/" + name)
            raise
        finally:
            os.close(fd)
        self.size = size
        self.buf = memoryview(self._mmap)

    @classmethod
    def create(cls, name: str, size: int) -> ShmSegment:
        return cls(name, size, create=True)

    @classmethod
    def attach(cls, name: str) -> ShmSegment:
        return cls(name, 0, create=False)

    def close(self) -> None:
        """Unmap. Every view handed out (rings, atomic words) must be closed first."""
        if self._mmap is not None:
            self.buf.release()
            self._mmap.close()
            self._mmap = None

    def unlink(self) -> None:
        unlink_segment(self.name)


def unlink_segment(name: str) -> bool:
    """Remove a segment by name; True if it existed."""
    try:
        _posixshmem.shm_unlink("/" + name)
        return True
    except FileNotFoundError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_resources(instance: str, runtime_base: Path) -> tuple[list[tuple[str, int]], list[tuple[Path, int]]]:
    """Every segment and runtime dir of `instance`, with the supervisor pid that made it."""
    pattern = re.compile(rf"^{re.escape(instance)}-(\d+)-")
    segments = []
    if SHM_DIR.is_dir():
        for entry in SHM_DIR.iterdir():
            m = pattern.match(entry.name)
            if m:
                segments.append((entry.name, int(m.group(1))))
    dirs = []
    dir_pattern = re.compile(rf"^{re.escape(instance)}-(\d+)$")
    if runtime_base.is_dir():
        for entry in runtime_base.iterdir():
            m = dir_pattern.match(entry.name)
            if m and entry.is_dir():
                dirs.append((entry, int(m.group(1))))
    return segments, dirs


def sweep_dead_runs(instance: str, runtime_base: Path) -> list[str]:
    """Unlink segments and remove socket dirs left by runs whose supervisor is gone.

    Only for a supervisor's start-up, before it creates its own.
    """
    removed: list[str] = []
    segments, dirs = run_resources(instance, runtime_base)
    # Called before this run creates anything, so entries with our own pid are leftovers too
    # (a container's PID 1 is always 1).
    me = os.getpid()
    for name, pid in segments:
        if (pid == me or not pid_alive(pid)) and unlink_segment(name):
            removed.append(str(SHM_DIR / name))
    for path, pid in dirs:
        if pid == me or not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    for item in removed:
        log.warning("swept leftover of a dead engine run: %s", item)
    return removed
