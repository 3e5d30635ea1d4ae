"""The call limit learned from measured load: replies' response times and host CPU; /proc/stat read right."""

from __future__ import annotations

from pathlib import Path

from engine.admission import MIN_REPLIES, RECENT, Admission, HostCpu, Reservations


def test_slow_replies_lower_the_limit_below_the_load_that_made_them_and_fast_ones_raise_it_again() -> None:
    a = Admission(max_calls=16, max_response_ms=1500, max_cpu_pct=0)
    for _ in range(10 * MIN_REPLIES):
        a.reply(900, calls_up=4)
    assert a.limit == 16 and a.verdict(calls_up=15).admit and a.health(4)["replies_at_this_limit"] <= RECENT
    a = Admission(max_calls=16, max_response_ms=1500, max_cpu_pct=0)
    for _ in range(MIN_REPLIES):
        a.reply(2600, calls_up=6)
    v = a.verdict(calls_up=5)
    assert a.limit == 5 and not v.admit and "p90 response time 2600 ms > 1500 with 6 calls up" in v.why
    assert a.verdict(calls_up=4).admit
    # Replies from before the change never judge the new load: it takes MIN_REPLIES new ones.
    for _ in range(MIN_REPLIES - 1):
        a.reply(1000, calls_up=5)
    assert a.limit == 5
    a.reply(1000, calls_up=5)
    assert a.limit == 6
    for _ in range(MIN_REPLIES):
        a.reply(1300, calls_up=6)  # under the limit, not well under it: it holds
    assert a.limit == 6


def test_the_limit_never_falls_below_one_call() -> None:
    a = Admission(max_calls=4, max_response_ms=1500, max_cpu_pct=0)
    for _ in range(3 * MIN_REPLIES):
        a.reply(5000, calls_up=1)
    assert a.limit == 1 and a.verdict(calls_up=0).admit and not a.verdict(calls_up=1).admit


def test_a_pegged_cpu_lets_no_call_in_while_one_is_up_until_it_eases() -> None:
    a = Admission(max_calls=16, max_response_ms=0, max_cpu_pct=90)
    for t in range(5):
        a.cpu(50.0, float(t))
    assert a.verdict(calls_up=3).admit
    for t in range(5, 20):
        a.cpu(99.0, float(t))
    v = a.verdict(calls_up=3)
    assert not v.admit and "host CPU 99.0% > 90%" in v.why and a.health(3)["host_cpu_pct"] == 99.0
    assert a.verdict(calls_up=0).admit and a.limit == 16  # the learned limit stays
    for t in range(20, 40):
        a.cpu(80.0, float(t))
    assert not a.verdict(calls_up=3).admit  # under the limit, not well under it (72 %)
    for t in range(40, 60):
        a.cpu(60.0, float(t))
    assert a.verdict(calls_up=3).admit
    off = Admission(max_calls=16, max_response_ms=0, max_cpu_pct=0)
    for t in range(20):
        off.cpu(100.0, float(t))
        off.reply(9000, calls_up=8)
    assert off.limit == 16 and off.verdict(calls_up=15).admit  # both off: only max_calls limits


def test_host_cpu_is_the_busy_share_between_samples(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\n")
    cpu = HostCpu(stat)
    # 300 more ticks, of them 75 idle or iowait: 75 % busy.
    stat.write_text("cpu  250 0 175 750 125 0 0 0 0 0\ncpu0 1 0 1 1 1 0 0 0 0 0\n")
    assert cpu.sample() == 75.0
    assert cpu.sample() is None  # no ticks since
    assert HostCpu(tmp_path / "missing").sample() is None


def test_a_line_is_held_from_the_answer_until_the_stream_starts_or_the_hold_lapses() -> None:
    held = Reservations(60.0)
    held.reserve("CA1", now=100.0)
    held.reserve("CA2", now=130.0)
    assert held.held(now=131.0) == 2
    assert held.held(now=131.0, besides="CA1") == 1  # the same call answered again is not a second call
    assert held.claim("CA1") and not held.claim("CA1")
    assert held.held(now=131.0) == 1
    assert held.held(now=190.5) == 0  # CA2's stream never came: its line is free again
