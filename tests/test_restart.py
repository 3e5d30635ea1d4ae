"""Restart back-off and the intensity cap."""

from engine.restart import RestartPolicy


def policy() -> RestartPolicy:
    return RestartPolicy(first_s=0.0, base_s=0.5, max_s=3.0, intensity=5, window_s=60.0)


def test_first_restart_is_immediate_then_doubles_up_to_the_cap() -> None:
    p = policy()
    assert [p.on_exit(t) for t in (0, 1, 2, 3, 4)] == [0.0, 0.5, 1.0, 2.0, 3.0]


def test_too_many_crashes_in_the_window_gives_up() -> None:
    p = policy()
    for t in range(5):
        assert p.on_exit(float(t)) is not None
    assert p.on_exit(5.0) is None


def test_crashes_spread_beyond_the_window_never_give_up() -> None:
    p = policy()
    for t in range(0, 1000, 61):
        assert p.on_exit(float(t)) == 0.0
