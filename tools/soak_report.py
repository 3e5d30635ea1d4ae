"""The soak report: pure functions from what the callers, the engine and /proc saw to figures and verdicts.

Frame ledger, per direction, per call (the caller's record joined with the transport's summary):

  inbound lost        frames the caller sent (up to the last one the engine took in: a caller that
                      vanishes cuts its own tail) that the transport never took in, plus frames the
                      transport could not put in the speech ring (ring full)
  inbound late        frames that reached the transport more than 60 ms behind the line's schedule
  inbound duplicated  messages whose sequence number is at or below one already seen (duplicated or
                      out of order)
  outbound lost       bot frames missing between the TTS and the transport (ring sequence gaps that
                      no barge-in `clear` explains)
  outbound late       stalls the caller heard: bot audio that arrived after everything before it had
                      played, mid-utterance
  outbound duplicated marks the caller got twice, and media beyond what the engine says it sent

A call exposed to a kill (up between the SIGKILL and the restart's Ready plus a second) is judged
apart: it must recover or end with a clear outcome. Every other call must complete with nothing lost.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from tools.soak_calls import frames_expected

EXPOSURE_TAIL_S = 1.0  # after a restart is Ready, calls still settle (replayed CallStarted, re-prompt)
INBOUND_PATH = ("speech", "transport")  # a kill of these may lose inbound audio; llm or tts must not


def percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    p50, p95, p99 = np.percentile(np.asarray(values, float), [50, 95, 99])
    return {"n": len(values), "p50": round(float(p50), 1), "p95": round(float(p95), 1),
            "p99": round(float(p99), 1), "max": round(max(values), 1)}


def exposure(record: dict[str, Any], kills: list[dict[str, Any]]) -> list[str]:
    """The kills this call was up for (the targets, in order)."""
    start, end = record["t_dial"], record["t_end"]
    hit = []
    for kill in kills:
        if "skipped" in kill:
            continue
        until = kill["at"] + (kill.get("restart_s") or 60.0) + EXPOSURE_TAIL_S
        if kill["at"] <= end and until >= start:
            hit.append(kill["target"])
    return hit


def ledger(record: dict[str, Any], summary: dict[str, Any] | None) -> dict[str, Any]:
    """One call's frames per direction; None where the engine's side is unknown (its transport died)."""
    out: dict[str, Any] = {
        "out_late": record["underruns"], "out_late_ms": record["underrun_ms"],
        "out_late_at_s": [at for at, _ in record.get("underrun_at", [])],
        "out_dup": record["duplicate_marks"],
    }
    if summary is None:
        return {**out, "in_lost": None, "in_late": None, "in_dup": None, "out_lost": None}
    expected = frames_expected(record["sent_runs"], summary["last_timestamp_ms"])
    return {**out,
            "in_sent": expected, "in_received": summary["frames_in"],
            "in_lost": max(0, expected - summary["frames_in"]) + summary["inbound_dropped"],
            "in_late": summary["inbound_late"], "in_dup": summary["seq_out_of_order"],
            "out_lost": summary["outbound_gaps"],
            "out_dup": record["duplicate_marks"] + max(0, record["media_received"] - summary["frames_out"])}


def classify(record: dict[str, Any], hit: list[str]) -> str:
    """completed, recovered (after a fault), turned_away (the busy line), ended_by_fault, ended_by_engine (it
    closed the call first, with a code and reason: an outcome, though not the scripted one), or failed (the
    engine stopped answering, or a dial was refused with no fault to explain it, or the caller timed out, fault
    or not: no outcome)."""
    outcome = record["outcome"]
    if outcome == "busy":
        return "turned_away"  # the busy line: the engine judged it had no room (max_calls or measured load)
    if outcome == "ok":
        return "recovered" if hit else "completed"
    if outcome in ("timed_out", "error", "unfinished"):
        return "failed"  # a fault may end a call, never leave it hanging
    if hit:
        return "ended_by_fault"  # closed by the engine or dropped with its transport: the fault's doing
    return "ended_by_engine" if outcome == "engine_closed" else "failed"  # a drop with no fault is a failure


def _sum(rows: list[dict[str, Any]], key: str) -> int | None:
    known = [r[key] for r in rows if r.get(key) is not None]
    return int(sum(known)) if known else (0 if not rows else None)


def frames_table(calls: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [c["frames"] for c in calls]
    late_at = sorted(at for r in rows for at in r.get("out_late_at_s", []))
    return {
        "calls": len(rows), "calls_without_engine_summary": sum(1 for r in rows if r["in_lost"] is None),
        "inbound": {"sent": _sum(rows, "in_sent"), "lost": _sum(rows, "in_lost"), "late": _sum(rows, "in_late"),
                    "duplicated": _sum(rows, "in_dup")},
        "outbound": {"lost": _sum(rows, "out_lost"), "late": _sum(rows, "out_late"),
                     "late_ms": round(sum(r["out_late_ms"] for r in rows), 1), "duplicated": _sum(rows, "out_dup"),
                     # how far into the bot's utterance each stall began: one place (e.g. a chunk boundary) or many
                     "late_at_s": {"p50": round(float(np.median(late_at)), 2), "min": late_at[0],
                                   "max": late_at[-1]} if late_at else None},
    }


def resources(samples: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    """Per process role: RSS and CPU over time, and their summary (a restarted process continues its role)."""
    series: dict[str, list[list[float | None]]] = defaultdict(list)
    for row in samples:
        for name, p in row["procs"].items():
            series[name].append([round(row["t"] - t0, 1), p["rss_mb"], p["cpu_pct"]])
    out = {}
    for name, points in series.items():
        rss = [p[1] for p in points if p[1] is not None]
        cpu = [p[2] for p in points if p[2] is not None]
        out[name] = {"rss_mb_first": rss[0] if rss else None, "rss_mb_last": rss[-1] if rss else None,
                     "rss_mb_max": max(rss) if rss else None,
                     "cpu_pct_mean": round(float(np.mean(cpu)), 1) if cpu else None,
                     "cpu_pct_max": max(cpu) if cpu else None, "series_t_rss_cpu": points}
    return out


def leaks(before: dict[str, Any], after: dict[str, Any], stopped: dict[str, Any] | None) -> list[str]:
    """Everything that did not come back: empty when nothing leaked."""
    found = []
    if after["zombies"]:
        found.append(f"{after['zombies']} zombie processes while the engine ran")
    if after["processes"] != before["processes"]:
        found.append(f"engine processes: {before['processes']} before, {after['processes']} after the calls")
    if after["shm_segments"] != before["shm_segments"]:
        found.append(f"shared memory: {before['shm_segments']} before, {after['shm_segments']} after the calls")
    for name, fds in before["fds"].items():
        if fds is not None and after["fds"].get(name) is not None and after["fds"][name] > fds:
            found.append(f"{name}: {fds} file descriptors before, {after['fds'][name]} after the calls")
    if stopped is not None:
        start, end = stopped.get("own_fds_at_start"), stopped["own_fds"]
        if start is not None and end is not None and end > start:
            found.append(f"the soak tool itself: {start} fds at its start, {end} at its end")
        if stopped["shm_segments"]:
            found.append(f"shared memory left after the engine stopped: {stopped['shm_segments']}")
        if stopped["processes"]:
            found.append(f"{stopped['processes']} engine processes left after it stopped")
        if stopped["runtime_dirs"]:
            found.append(f"runtime dirs left after the engine stopped: {stopped['runtime_dirs']}")
    return found


def summarize(records: list[dict[str, Any]], ended: dict[str, dict[str, Any]], kills: list[dict[str, Any]],
              samples: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any],
              stopped: dict[str, Any] | None, t0: float, run: dict[str, Any],
              max_v2v_p95_ms: float = 3000.0, max_late_fraction: float = 0.001) -> dict[str, Any]:
    calls = []
    for record in records:
        hit = exposure(record, kills)
        calls.append({**record, "faults": hit, "class": classify(record, hit),
                      "frames": ledger(record, ended.get(record["call_sid"]))})
    clean = [c for c in calls if not c["faults"]]
    classes = Counter(c["class"] for c in calls)
    v2v = [ms for c in calls for ms in c["voice_to_voice_ms"]]
    v2v_clean = [ms for c in clean for ms in c["voice_to_voice_ms"]]
    inbound_safe = [c for c in calls if not set(c["faults"]) & set(INBOUND_PATH)]
    lost_inbound_safe = sum(c["frames"]["in_lost"] or 0 for c in inbound_safe)
    unaccounted_safe = sum(1 for c in inbound_safe if c["frames"]["in_lost"] is None)
    leaked = leaks(before, after, stopped)
    sent_late = sum(c["sent_late"] for c in calls)
    checks = {
        "every_call_reached_an_outcome": classes.get("failed", 0) == 0,
        "no_inbound_frame_lost_outside_speech_or_transport_faults": lost_inbound_safe == 0,
        "nothing_leaked": not leaked,
    }
    frames_clean = frames_table(clean)
    sustained_why = []
    if not checks["every_call_reached_an_outcome"]:
        sustained_why.append(f"{classes['failed']} calls failed")
    if classes.get("turned_away"):
        sustained_why.append(f"{classes['turned_away']} callers turned away busy")
    if classes.get("ended_by_engine"):
        sustained_why.append(f"{classes['ended_by_engine']} calls ended by the engine before their script did")
    missed = sum(c.get("barge_in_missed", 0) for c in calls)
    if missed:
        sustained_why.append(f"{missed} barge-ins missed (the bot finished before the engine heard the caller)")
    if frames_clean["inbound"]["lost"]:
        sustained_why.append(f"{frames_clean['inbound']['lost']} inbound frames lost")
    sent = frames_clean["inbound"]["sent"] or 0
    late = frames_clean["inbound"]["late"] or 0
    if late > max_late_fraction * sent:
        sustained_why.append(f"{late} of {sent} inbound frames late (over {max_late_fraction:.1%})")
    line_s = sum(max(0.0, c["t_end"] - c["t_dial"]) for c in clean)
    stalled_s = frames_clean["outbound"]["late_ms"] / 1000
    if stalled_s > max_late_fraction * line_s:
        sustained_why.append(f"{stalled_s:.1f} s of bot audio stalls in {line_s:.0f} s of calls "
                             f"(over {max_late_fraction:.1%})")
    p95 = percentiles(v2v_clean).get("p95")
    if p95 is not None and p95 > max_v2v_p95_ms:
        sustained_why.append(f"voice-to-voice p95 {p95:.0f} ms > {max_v2v_p95_ms:.0f} ms")
    if sent_late > max_late_fraction * max(1, sum(c["frames_sent"] for c in calls)):
        sustained_why.append(f"the synthetic callers sent {sent_late} frames late (load generator overloaded)")
    if any("skipped" not in k for k in kills):
        sustained_why = ["not judged: faults were injected (run without --kill to find the sustained load)"]
    return {
        "run": run,
        "calls": {"total": len(calls), **{k: classes.get(k, 0) for k in
                                          ("completed", "recovered", "turned_away", "ended_by_fault",
                                           "ended_by_engine", "failed")},
                  "by_script": dict(Counter(c["script"] for c in calls)),
                  "failures": [{"call_sid": c["call_sid"], "script": c["script"], "class": c["class"],
                                "reason": c["reason"]}
                               for c in calls if c["class"] in ("failed", "ended_by_engine")][:50],
                  "fault_endings": dict(Counter(c["reason"][:80] for c in calls if c["class"] == "ended_by_fault"))},
        "latency_ms": {
            "voice_to_voice": percentiles(v2v), "voice_to_voice_no_fault": percentiles(v2v_clean),
            "barge_in": percentiles([ms for c in calls for ms in c["barge_in_ms"]]),
            "barge_in_missed": sum(c.get("barge_in_missed", 0) for c in calls),
            "dtmf_reply": percentiles([ms for c in calls for ms in c["dtmf_reply_ms"]]),
            "greeting": percentiles([c["greeting_ms"] for c in calls if "greeting_ms" in c]),
        },
        "frames": {"no_fault": frames_clean, "fault_exposed": frames_table([c for c in calls if c["faults"]]),
                   "inbound_lost_outside_speech_or_transport_faults": lost_inbound_safe,
                   "calls_outside_faults_without_engine_summary": unaccounted_safe},
        "load_generator": {"frames_sent_late": sent_late,
                           "max_send_lag_ms": max((c["max_send_lag_ms"] for c in calls), default=0.0)},
        "kills": kills,
        "restart_s": percentiles([k["restart_s"] for k in kills if k.get("restart_s") is not None]),
        "resources": resources(samples, t0),
        "leak_check": {"before": before, "after_calls": after, "after_stop": stopped, "leaks": leaked},
        "checks": checks,
        "sustained": {"ok": not sustained_why, "why_not": sustained_why, "max_v2v_p95_ms": max_v2v_p95_ms,
                      "max_late_fraction": max_late_fraction},
        "call_records": calls,
    }


def table(report: dict[str, Any]) -> str:
    """The terminal report."""
    r, calls, lat = report["run"], report["calls"], report["latency_ms"]
    lines = [f"soak: {r['callers']} callers, {r['profile']}, {r['duration_s']:g} s, mix {r['mix']}"
             + (f", kill {','.join(r['kill'])} every {r['kill_every_s']:g} s" if r.get("kill") else ""),
             "",
             f"calls: {calls['total']} total, {calls['completed']} completed, {calls['recovered']} recovered "
             f"after a fault, {calls['ended_by_fault']} ended by a fault, {calls['ended_by_engine']} ended early by "
             f"the engine, {calls['turned_away']} turned away busy, {calls['failed']} failed",
             "", f"{'latency (ms)':<34} {'n':>5} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}"]
    for name, key in (("voice-to-voice", "voice_to_voice"), ("voice-to-voice, no fault", "voice_to_voice_no_fault"),
                      ("barge-in (speech -> clear)", "barge_in"), ("keys -> reply", "dtmf_reply"),
                      ("connect -> greeting", "greeting")):
        p = lat[key]
        if p["n"]:
            lines.append(f"{name:<34} {p['n']:>5} {p['p50']:>8.0f} {p['p95']:>8.0f} {p['p99']:>8.0f} {p['max']:>8.0f}")
    lines += ["", f"{'frames':<34} {'lost':>8} {'late':>8} {'dup':>8}"]
    for label, key in (("no fault", "no_fault"), ("exposed to a kill", "fault_exposed")):
        f = report["frames"][key]
        if not f["calls"]:
            continue
        lines.append(f"{'inbound, ' + label:<34} {_n(f['inbound']['lost']):>8} {_n(f['inbound']['late']):>8} "
                     f"{_n(f['inbound']['duplicated']):>8}   of {_n(f['inbound']['sent'])} sent")
        lines.append(f"{'outbound, ' + label:<34} {_n(f['outbound']['lost']):>8} {_n(f['outbound']['late']):>8} "
                     f"{_n(f['outbound']['duplicated']):>8}   ({f['outbound']['late_ms']:.0f} ms of stalls"
                     + (f", {at['p50']:.2f} s into the bot's audio, p50)" if (at := f['outbound'].get('late_at_s'))
                        else ")"))
    if report["kills"]:
        lines += ["", "kills:"]
        for k in report["kills"]:
            what = k.get("skipped") or (f"back in {k['restart_s']:.2f} s" if k.get("restart_s") is not None
                                        else "NOT back")
            lines.append(f"  {k['target']:<10} pid {k['pid']}, {k['calls_active']} calls up: {what}")
    lines += ["", f"{'process':<16} {'RSS first':>10} {'RSS last':>10} {'RSS max':>10} {'CPU mean':>9} {'CPU max':>8}"]
    for name, p in sorted(report["resources"].items()):
        lines.append(f"{name:<16} {_mb(p['rss_mb_first'])} {_mb(p['rss_mb_last'])} {_mb(p['rss_mb_max'])} "
                     f"{_pct(p['cpu_pct_mean'])} {_pct(p['cpu_pct_max'], 8)}")
    lc = report["leak_check"]
    b, a, s = lc["before"], lc["after_calls"], lc["after_stop"]
    lines += ["", f"{'leak check':<16} {'before':>10} {'after':>10} {'stopped':>10}",
              f"{'shm segments':<16} {len(b['shm_segments']):>10} {len(a['shm_segments']):>10} "
              f"{'-' if s is None else len(s['shm_segments']):>10}",
              f"{'processes':<16} {b['processes']:>10} {a['processes']:>10} {'-' if s is None else s['processes']:>10}",
              f"{'fds (all)':<16} {sum(v or 0 for v in b['fds'].values()):>10} "
              f"{sum(v or 0 for v in a['fds'].values()):>10} {'-':>10}",
              f"{'soak tool fds':<16} {'-' if s is None else s.get('own_fds_at_start'):>10} {'-':>10} "
              f"{'-' if s is None else s['own_fds']:>10}"]
    lines += ["", "checks:"]
    lines += [f"  {'ok  ' if v else 'FAIL'} {k.replace('_', ' ')}" for k, v in report["checks"].items()]
    lines += [f"  {x}" for x in lc["leaks"]] + [f"  {f['class']}: {f['script']} {f['call_sid']}: {f['reason']}"
                                                 for f in calls["failures"][:10]]
    s_ = report["sustained"]
    lines.append(f"sustained in real time: {'yes' if s_['ok'] else 'no: ' + '; '.join(s_['why_not'])}")
    return "\n".join(lines)


def _n(v: int | None) -> str:
    return "?" if v is None else str(v)


def _mb(v: float | None) -> str:
    return f"{'?' if v is None else f'{v:.0f} MiB':>10}"


def _pct(v: float | None, width: int = 9) -> str:
    return f"{'?' if v is None else f'{v:.0f}%':>{width}}"
