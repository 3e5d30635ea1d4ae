"""Files only this user may read, made so that a symlink planted in their way is never written through.

Recordings hold callers' voices, transcripts and phone numbers: directories are 0700 and files 0600
whatever the umask; a file is always new (O_EXCL) and neither it nor its directory is reached through
a symlink (O_NOFOLLOW, and files are opened relative to the directory's descriptor, so the directory
cannot be swapped for a link between its creation and theirs).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import IO

DIR_MODE = 0o700
FILE_MODE = 0o600


class UnsafePath(OSError):
    """Something other than what we made stands where a private file or directory is to go."""


def private_root(path: Path) -> None:
    """`path` as a directory; made 0700 if it is not there (one that exists is the operator's choice)."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # made meanwhile by another process
        os.mkdir(path, DIR_MODE)
        os.chmod(path, DIR_MODE)  # the umask may have taken bits the mode asked for; never adds any


def new_private_dir(parent: Path, name: str) -> int:
    """Make `parent/name` (0700) and open it; returns its descriptor. FileExistsError if a directory is already
    there, UnsafePath if anything else is (a symlink, a file)."""
    path = parent / name
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            raise
        raise UnsafePath(f"{path} is not a directory we made (a symlink or a file is there): not written") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:  # replaced by a link since we made it
        raise UnsafePath(f"{path} changed under us ({exc.strerror}): not written") from None
    os.fchmod(fd, DIR_MODE)
    return fd


def new_private_file(dir_fd: int, name: str) -> IO[bytes]:
    """Create `name` (0600) in the directory open at `dir_fd`, for writing; it must not exist yet."""
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE,
                     dir_fd=dir_fd)
    except FileExistsError:
        raise UnsafePath(f"{name} is already there (a planted file or symlink?): not written") from None
    os.fchmod(fd, FILE_MODE)
    return os.fdopen(fd, "wb")
