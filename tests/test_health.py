"""What /health says, from given process states and ring counters."""

from engine.health import build_health
from ipc.pool import LeaseInfo
from ipc.ring import RingStats
from ipc.schema import PROC_NAMES, ProcState, Status

RING = RingStats(written=10, read=8, drops=2, stale=1, backlog=2, epoch=1, producers=1)
IDLE = RingStats(0, 0, 0, 0, 0, 0, 0)


def status(*states: str) -> Status:
    names = PROC_NAMES
    return Status(pool="p", max_calls=2, procs=[
        ProcState(name=n, state=s, pid=100 + i, incarnation=1, restarts=0, last_exit=None, started_t_ns=1,
                  ready_t_ns=1, uptime_s=1.0,
                  heartbeat_age_s=0.1)  # type: ignore[arg-type]
        for i, (n, s) in enumerate(zip(names, states, strict=True))
    ])


def test_ok_when_all_ready_and_fresh() -> None:
    code, body = build_health(status(*["ready"] * 4), 0.2, 2.0,
                              [LeaseInfo(1, 1, "CA1", 5, 0)], [IDLE, RING], [IDLE, IDLE], {})
    assert code == 200 and body["status"] == "ok"
    assert body["rings"]["inbound_drops"] == 2
    assert body["rings"]["calls"][0]["inbound"]["drops"] == 2
    assert body["processes"]["speech"]["pid"] == 101


def test_degraded_while_a_process_restarts() -> None:
    code, body = build_health(status("ready", "backoff", "ready", "ready"), 0.2, 2.0, [], [IDLE], [IDLE], {})
    assert code == 503 and body["status"] == "degraded"


def test_stale_report_means_the_supervisor_is_unresponsive() -> None:
    code, body = build_health(status(*["ready"] * 4), 9.0, 2.0, [], [IDLE], [IDLE], {})
    assert code == 503 and body["status"] == "supervisor-unresponsive"


def test_no_report_yet() -> None:
    code, body = build_health(None, None, 2.0, [], [IDLE], [IDLE], {})
    assert code == 503 and body["status"] == "starting"
