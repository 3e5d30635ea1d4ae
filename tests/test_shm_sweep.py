"""The start-up sweep of dead runs' leftovers never stops a supervisor from starting, and takes only what is ours."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipc.shm import SHM_DIR, sweep_dead_runs
from tools.engine_run import unique_instance

OTHER_UID = 4242


@pytest.fixture
def instance() -> Iterator[str]:
    name = unique_instance()
    yield name
    for entry in SHM_DIR.glob(f"{name}-*"):  # whatever the test left in the real /dev/shm
        entry.unlink(missing_ok=True)


def test_odd_names_never_stop_the_sweep(instance: str, tmp_path: Path) -> None:
    """`touch /dev/shm/engine-2147483648-x` made os.kill raise OverflowError and the supervisor never started.
    A pid no process can have is a run that is over: ours, so swept. Names no run writes are left alone."""
    over = [f"{instance}-2147483648-x", f"{instance}-99999999999999999999-x"]
    odd = [f"{instance}-0-x", f"{instance}-007-x", f"{instance}-{'9' * 30}-x"]
    for name in over + odd:
        (SHM_DIR / name).touch()
    (tmp_path / f"{instance}-2147483648").mkdir()
    swept = sweep_dead_runs(instance, tmp_path)
    assert sorted(swept) == sorted([str(SHM_DIR / name) for name in over] + [str(tmp_path / f"{instance}-2147483648")])
    assert all((SHM_DIR / name).exists() for name in odd)


def test_another_users_leftovers_are_left_alone(instance: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unlinking another user's segment raised PermissionError and the supervisor never started; it is not ours
    to remove anyway (our own dead runs' leftovers still go: tests/test_pool.py)."""
    theirs = SHM_DIR / f"{instance}-{os.getpid()}-pool"  # our pid: the sweep would otherwise take it for ours
    theirs.touch()
    their_dir = tmp_path / f"{instance}-{os.getpid()}"
    their_dir.mkdir()
    if os.geteuid() == 0:
        os.chown(theirs, OTHER_UID, OTHER_UID)
        os.chown(their_dir, OTHER_UID, OTHER_UID)
    else:  # we cannot give a file away: claim to be another user instead
        me = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: me + 1)
    assert sweep_dead_runs(instance, tmp_path) == []
    assert theirs.exists() and their_dir.is_dir()
