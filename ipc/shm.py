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


PID_MAX = 1 << 22  # Linux's ceiling for pid_max: a bigger number in a name is no live process


def pid_alive(pid: int) -> bool:
    if pid > PID_MAX:
        return False  # os.kill would raise OverflowError past a C int; no process has such a pid anyway
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_pid(text: str) -> int | None:
    """The supervisor pid a resource's name carries, or None when the name is not one a run writes (pid 0, a
    leading zero). A pid past PID_MAX is returned: no process has it, so that run is over."""
    if len(text) > 20 or text.startswith("0"):
        return None
    return int(text)


def _ours(path: Path) -> bool:
    """Made by this user: another user's engine (or anyone's lookalike) is not ours to sweep."""
    try:
        return path.lstat().st_uid == os.geteuid()
    except OSError:
        return False


def run_resources(instance: str, runtime_base: Path) -> tuple[list[tuple[str, int]], list[tuple[Path, int]]]:
    """Every segment and runtime dir of `instance` this user owns, with the supervisor pid that made it.

    Anything else that merely looks like one (another user's, a name whose pid no process can have) is
    skipped: the sweep must never be the reason a supervisor cannot start.
    """
    segments = []
    if SHM_DIR.is_dir():
        for entry in SHM_DIR.iterdir():
            pid = _matching_pid(entry, rf"^{re.escape(instance)}-(\d+)-")
            if pid is not None:
                segments.append((entry.name, pid))
    dirs = []
    if runtime_base.is_dir():
        for entry in runtime_base.iterdir():
            pid = _matching_pid(entry, rf"^{re.escape(instance)}-(\d+)$")
            if pid is not None and entry.is_dir():
                dirs.append((entry, pid))
    return segments, dirs


def _matching_pid(entry: Path, pattern: str) -> int | None:
    m = re.match(pattern, entry.name)
    if not m:
        return None
    pid = _run_pid(m.group(1))
    if pid is None:
        log.debug("sweep: skipping %s: %s is no pid", entry, m.group(1))
    elif not _ours(entry):
        log.debug("sweep: skipping %s: another user's", entry)
        return None
    return pid


def sweep_dead_runs(instance: str, runtime_base: Path) -> list[str]:
    """Unlink segments and remove socket dirs left by runs whose supervisor is gone.

    Only for a supervisor's start-up, before it creates its own. What cannot be removed is
    logged and left: it must not stop the engine from starting.
    """
    removed: list[str] = []
    segments, dirs = run_resources(instance, runtime_base)
    # Called before this run creates anything, so entries with our own pid are leftovers too
    # (a container's PID 1 is always 1).
    me = os.getpid()
    for name, pid in segments:
        if pid == me or not pid_alive(pid):
            try:
                if unlink_segment(name):
                    removed.append(str(SHM_DIR / name))
            except OSError as exc:
                log.warning("could not sweep %s: %s", SHM_DIR / name, exc)
    for path, pid in dirs:
        if pid == me or not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                log.warning("could not sweep %s", path)
            else:
                removed.append(str(path))
    for item in removed:
        log.warning("swept leftover of a dead engine run: %s", item)
    return removed
