"""Helpers for tests that create shared memory: unique names and a leak check."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

_counter = itertools.count()


def unique_instance() -> str:
    """An engine instance name no other test (or test run) uses."""
    return f"t{os.getpid()}x{next(_counter)}"


def shm_entries(prefix: str) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(prefix))
