"""Prometheus metrics: what a scrape says, parsed with the client's own text-format parser."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from engine.metrics import CallMetrics, Snapshot, outcome_class
from ipc.schema import ProcState, Status
from tests.transport_harness import AUTH_TOKEN, PUBLIC_URL, TransportHarness
from tools.caller import SyntheticCaller


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def proc(name: str, restarts: int, **stats: int) -> ProcState:
    return ProcState(name=name, state="ready", pid=1, incarnation=restarts + 1, restarts=restarts, last_exit=None,
                     started_t_ns=0, ready_t_ns=0, uptime_s=1.0, heartbeat_age_s=0.1, stats=stats)


def test_a_scrape_holds_what_happened_in_prometheus_terms() -> None:
    status = Status(procs=[proc("llm", 2, queued=3), proc("tts", 0, queued=0), proc("speech", 1)], pool="p",
                    max_calls=8)
    metrics = CallMetrics(lambda: Snapshot(calls_active=2, status=status, counters={"connections_shed": 4},
                                           ring_drops={"inbound": 0, "outbound": 7}, admission_limit=5,
                                           turned_away=1))
    metrics.reply_sounded(0.82)
    metrics.reply_sounded(1.4)
    metrics.barge_in(0.13)
    metrics.stage("transcript", 0.12)
    metrics.stage("nonsense", 1.0)  # not a stage: ignored, never a new label
    metrics.turn()
    metrics.call_ended("caller hung up (stop)")
    metrics.call_ended("engine hung up: said goodbye")
    metrics.call_ended("rejected: malformed JSON")
    got = scrape(metrics.render().decode())
    assert got[("engine_calls_active", ())] == 2
    assert got[("engine_calls_total", (("outcome", "caller_hung_up"),))] == 1
    assert got[("engine_calls_total", (("outcome", "engine_hung_up"),))] == 1
    assert got[("engine_calls_total", (("outcome", "rejected"),))] == 1
    assert got[("engine_turns_total", ())] == 1
    assert got[("engine_voice_to_voice_seconds_count", ())] == 2
    assert got[("engine_voice_to_voice_seconds_bucket", (("le", "1.0"),))] == 1  # 0.82 s in, 1.4 s not
    assert got[("engine_voice_to_voice_seconds_bucket", (("le", "1.5"),))] == 2
    assert got[("engine_barge_in_seconds_count", ())] == 1
    assert got[("engine_turn_stage_seconds_count", (("stage", "transcript"),))] == 1
    assert not any(name.startswith("engine_turn_stage") and ("stage", "nonsense") in labels for name, labels in got)
    assert got[("engine_process_restarts_total", (("process", "llm"),))] == 2
    assert got[("engine_model_queue_depth", (("process", "llm"),))] == 3
    assert ("engine_model_queue_depth", (("process", "speech"),)) not in got  # it did not say
    assert got[("engine_ring_drops_total", (("direction", "outbound"),))] == 7
    assert got[("engine_transport_events_total", (("event", "connections_shed"),))] == 4
    assert got[("engine_admission_limit_calls", ())] == 5


def test_outcomes_are_a_few_classes() -> None:
    assert outcome_class("caller hung up (stop)") == "caller_hung_up"
    assert outcome_class("stream silent for 10 s") == "silent"
    assert outcome_class("caller not reading: a send did not drain in 5 s") == "caller_not_reading"
    assert outcome_class("socket closed without stop") == "dropped"
    assert outcome_class("something new") == "other"


def test_metrics_are_scraped_from_the_transport_during_and_after_a_call(tmp_path: Path) -> None:
    h = TransportHarness(tmp_path)

    async def scenario() -> tuple[dict[Any, float], dict[Any, float]]:
        async with SyntheticCaller(h.base_url, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN) as c:
            await c.connect(await c.dial())
            await asyncio.to_thread(h.call_started)
            during = scrape(await asyncio.to_thread(lambda: h.get("/metrics")[1].decode()))
            await c.hangup()
        for _ in range(50):
            after = scrape(await asyncio.to_thread(lambda: h.get("/metrics")[1].decode()))
            if after.get(("engine_calls_total", (("outcome", "caller_hung_up"),))):
                break
            await asyncio.sleep(0.1)
        return during, after

    try:
        during, after = asyncio.run(scenario())
        assert during[("engine_calls_active", ())] == 1
        assert after[("engine_calls_active", ())] == 0
        assert after[("engine_calls_total", (("outcome", "caller_hung_up"),))] == 1
        assert after[("engine_transport_events_total", (("event", "calls_started"),))] == 1
        health = json.loads(h.get("/health")[1])
        assert health["transport"]["counters"]["calls_ended"] == 1
        # What the recorder could not write is reported, not hidden (none here: the disk kept up).
        assert health["transport"]["files"]["recording_dropped_events"] == 0
        assert after[("engine_transport_events_total", (("event", "recording_errors"),))] == 0
    finally:
        h.close()
