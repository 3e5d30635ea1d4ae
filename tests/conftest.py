"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from ipc.pool import RingPool
from tools.engine_run import shm_entries, unique_instance


@pytest.fixture
def make_pool() -> Iterator[Callable[..., RingPool]]:
    """Create ring pools for a test; each is closed, unlinked and checked gone afterwards."""
    made: list[RingPool] = []

    def make(max_calls: int = 2, slots: int = 8, capacity: int = 640) -> RingPool:
        pool = RingPool.create(f"{unique_instance()}-{os.getpid()}-pool", max_calls, slots, capacity)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        name = pool.segment.name
        pool.close()
        pool.unlink()
        assert shm_entries(name) == []
