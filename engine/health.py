"""The /health document: process states from the supervisor plus ring counters from shared memory.

Pure: the transport gathers the inputs, this decides what they mean.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ipc.pool import LeaseInfo
from ipc.ring import RingStats
from ipc.schema import Status


def _ring(stats: RingStats) -> dict[str, int]:
    return {"written": stats.written, "read": stats.read, "drops": stats.drops,
            "stale": stats.stale, "backlog": stats.backlog}


def build_health(
    status: Status | None,
    status_age_s: float | None,
    stale_after_s: float,
    leases: list[LeaseInfo],
    inbound: list[RingStats],
    outbound: list[RingStats],
    bus_counters: dict[str, int],
) -> tuple[int, dict[str, Any]]:
    """HTTP status code and JSON body. 200 only when every process is ready and the report is fresh."""
    procs = {} if status is None else {p.name: msgspec.to_builtins(p) for p in status.procs}
    fresh = status_age_s is not None and status_age_s <= stale_after_s
    all_ready = bool(procs) and all(p["state"] == "ready" for p in procs.values())
    if status is None:
        verdict = "starting"
    elif not fresh:
        verdict = "supervisor-unresponsive"
    elif all_ready:
        verdict = "ok"
    else:
        verdict = "degraded"
    calls = [
        {"call_id": lease.call_id, "slot": lease.slot, "epoch": lease.epoch,
         "inbound": _ring(inbound[lease.slot]), "outbound": _ring(outbound[lease.slot])}
        for lease in leases
    ]
    body = {
        "status": verdict,
        "status_age_s": None if status_age_s is None else round(status_age_s, 3),
        "processes": procs,
        "calls_active": len(leases),
        "max_calls": len(inbound),
        "rings": {
            "inbound_drops": sum(s.drops for s in inbound),
            "outbound_drops": sum(s.drops for s in outbound),
            "inbound_stale": sum(s.stale for s in inbound),
            "outbound_stale": sum(s.stale for s in outbound),
            "calls": calls,
        },
        "bus": bus_counters,
    }
    return (200 if verdict == "ok" else 503), body
