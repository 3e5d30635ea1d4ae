"""Leasing ring pairs per call."""

from __future__ import annotations

import os

import pytest

from ipc.pool import RingPool
from tools.engine_run import shm_entries, unique_instance


@pytest.fixture
def pool(make_pool):
    return make_pool(max_calls=3, slots=4, capacity=64)


def test_lease_until_full_then_release_makes_room(pool: RingPool) -> None:
    leases = [pool.lease(f"CA{i}") for i in range(3)]
    assert all(lease is not None for lease in leases)
    assert sorted(lease.slot for lease in leases) == [0, 1, 2]  # type: ignore[union-attr]
    assert pool.lease("CA-overflow") is None
    assert {info.call_id for info in pool.leases()} == {"CA0", "CA1", "CA2"}
    assert pool.release(leases[1])  # type: ignore[arg-type]
    assert not pool.release(leases[1])  # type: ignore[arg-type]  # twice is refused
    again = pool.lease("CA3")
    assert again is not None and again.slot == leases[1].slot  # type: ignore[union-attr]
    assert again.epoch > leases[1].epoch  # type: ignore[union-attr]


def test_a_second_process_sees_the_same_leases(pool: RingPool) -> None:
    lease = pool.lease("CA-shared")
    other = RingPool.attach(pool.segment.name)
    try:
        assert [(i.slot, i.call_id, i.epoch) for i in other.leases()] == [(lease.slot, "CA-shared", lease.epoch)]  # type: ignore[union-attr]
        assert other.inbound[lease.slot].epoch == lease.epoch  # type: ignore[union-attr]
    finally:
        other.close()


def test_reclaim_frees_only_the_dead_owners_leases(pool: RingPool) -> None:
    mine = pool.lease("CA-mine")
    assert mine is not None
    freed = pool.reclaim_owner(os.getpid() + 1_000_000)
    assert freed == []
    freed = pool.reclaim_owner(os.getpid())
    assert [f.call_id for f in freed] == ["CA-mine"]
    assert pool.leases() == []
    assert not pool.release(mine)


def test_call_id_too_long_is_refused(pool: RingPool) -> None:
    with pytest.raises(ValueError, match="longer than"):
        pool.lease("x" * 65)


def test_attach_to_something_else_is_refused() -> None:
    from ipc.shm import ShmSegment

    name = f"{unique_instance()}-{os.getpid()}-junk"
    seg = ShmSegment.create(name, 4096)
    try:
        with pytest.raises(ValueError, match="not a ring pool"):
            RingPool.attach(name)
    finally:
        seg.close()
        seg.unlink()


def test_releasing_twice_cannot_free_the_next_lease_of_the_same_slot(pool: RingPool) -> None:
    first = pool.lease("CA-a")
    assert first is not None and pool.release(first)
    second = pool.lease("CA-b")
    assert second is not None and second.slot == first.slot
    assert not pool.release(first)  # a late duplicate release of the first call
    assert [i.call_id for i in pool.leases()] == ["CA-b"]


def test_start_up_sweep_removes_leftovers_named_with_our_own_pid(tmp_path) -> None:
    """In a container the supervisor is PID 1 in every run: its old segments carry its own pid."""
    from ipc.shm import ShmSegment, sweep_dead_runs

    instance = unique_instance()
    seg = ShmSegment.create(f"{instance}-{os.getpid()}-pool", 4096)
    seg.close()
    (tmp_path / f"{instance}-{os.getpid()}").mkdir()
    removed = sweep_dead_runs(instance, tmp_path)
    assert len(removed) == 2
    assert shm_entries(f"{instance}-") == [] and not (tmp_path / f"{instance}-{os.getpid()}").exists()
