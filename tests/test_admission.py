"""Admission from measured load: replies' response times and host CPU, with hysteresis; /proc/stat read right."""

from __future__ import annotations

from pathlib import Path

from engine.admission import Admission, HostCpu


def test_a_new_caller_is_turned_away_while_replies_are_slow_and_let_in_once_they_recover() -> None:
    a = Admission(max_response_ms=1500, max_cpu_pct=0)
    for t, ms in enumerate((700, 800, 900)):
        a.reply(ms, float(t))
    assert a.verdict(calls_active=3, now=3.0).admit
    for t, ms in enumerate((2500, 2600, 2400, 2700), start=4):
        a.reply(ms, float(t))
    v = a.verdict(calls_active=3, now=8.0)
    assert not v.admit and "p90 response time 2700 ms > 1500" in v.why
    # A minute on, the slow replies have left the window. Replies of 1300 ms are under the limit, but a box that
    # was saturated opens again only under 80 % of it (1200 ms) ...
    for t in range(60, 70):
        a.reply(1300, float(t))
    assert not a.verdict(calls_active=3, now=70.0).admit
    for t in range(70, 135):
        a.reply(900, float(t))
    assert a.verdict(calls_active=3, now=135.0).admit  # ... and does once they are well under
    assert a.health(3, 135.0)["response_p90_ms"] == 900


def test_with_no_call_up_a_caller_is_always_let_in() -> None:
    a = Admission(max_response_ms=1500, max_cpu_pct=0)
    for t in range(5):
        a.reply(4000, float(t))
    assert not a.verdict(calls_active=1, now=5.0).admit
    assert a.verdict(calls_active=0, now=5.0).admit  # nothing of ours left to protect


def test_too_few_replies_say_nothing_and_cpu_decides_alone() -> None:
    a = Admission(max_response_ms=1500, max_cpu_pct=90)
    a.reply(5000, 0.0)
    a.reply(5000, 0.5)
    assert a.verdict(calls_active=1, now=1.0).admit
    for t in range(10):
        a.cpu(97.0, 1.0 + t)
    v = a.verdict(calls_active=1, now=11.0)
    assert not v.admit and "host CPU 97.0% > 90%" in v.why
    assert Admission(0, 0).verdict(5, 0.0).admit  # both off: only max_calls limits


def test_host_cpu_is_the_busy_share_between_samples(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\n")
    cpu = HostCpu(stat)
    # 300 more ticks, of them 75 idle or iowait: 75 % busy.
    stat.write_text("cpu  250 0 175 750 125 0 0 0 0 0\ncpu0 1 0 1 1 1 0 0 0 0 0\n")
    assert cpu.sample() == 75.0
    assert cpu.sample() is None  # no ticks since
    assert HostCpu(tmp_path / "missing").sample() is None
