"""Reading a latency trace: per-reply waterfalls, per-segment percentiles, engine overhead, Perfetto export.

A reply's stages (engine/trace.py) are cut into segments, each owned by a model,
by policy (waiting for the end-of-turn silence) or by the engine itself (bus hops,
queues, pacing). The engine's overhead is the sum of its own segments: time
between stages not spent in a model and not chosen by policy.

A reply started at the caller's pause (speculative) runs beside the end-of-turn
wait, so its segments are those of its critical path: if its audio was ready when
the turn was confirmed, the wait and the commit; if not, the chain from the pause's
transcript to its first audio. Speculative replies that were thrown away are
counted, with how long each ran before it was.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.trace import TraceEvent

Owner = Literal["policy", "model", "engine"]

# (from, to, owner, what): consecutive stages of a reply to the caller.
REPLY_SEGMENTS: tuple[tuple[str, str, Owner, str], ...] = (
    ("speech_end", "end_of_turn", "policy", "end-of-turn silence"),
    ("end_of_turn", "transcript", "model", "STT after the turn (speculative STT hides most)"),
    ("transcript", "reply_requested", "engine", "bus + conductor"),
    ("reply_requested", "llm_start", "engine", "bus + LLM queue"),
    ("llm_start", "llm_first_token", "model", "LLM prefill"),
    ("llm_first_token", "llm_first_sentence", "model", "LLM decode to the first clause"),
    ("llm_first_sentence", "tts_start", "engine", "bus + TTS queue"),
    ("tts_start", "tts_first_audio", "model", "TTS first audio"),
    ("tts_first_audio", "first_audio_out", "engine", "ring + transport to the socket"),
)
# A reply started at the pause whose audio was ready before the turn was confirmed: the wait is the path.
HELD_SEGMENTS: tuple[tuple[str, str, Owner, str], ...] = (
    ("speech_end", "end_of_turn", "policy", "end-of-turn silence"),
    ("end_of_turn", "reply_committed", "engine", "final transcript + commit"),
    ("reply_committed", "first_audio_out", "engine", "held audio released to the socket"),
)
# A reply started at the pause whose audio came after the turn was confirmed: the models are the path.
CHAIN_SEGMENTS: tuple[tuple[str, str, Owner, str], ...] = (
    ("speech_end", "transcript", "policy", "pause, then STT at the pause"),
    *REPLY_SEGMENTS[2:],
)
# Where the transcript's time went, on any path: the pause (or the turn's end) and the wait for the Whisper worker,
# then Whisper itself. Not on a path of their own: they split the first segment of each.
STT_SEGMENTS: tuple[tuple[str, str, Owner, str], ...] = (
    ("speech_end", "stt_start", "policy", "pause or end of turn, then the wait for Whisper"),
    ("stt_start", "transcript", "model", "Whisper"),
)
BARGE_IN_SEGMENTS: tuple[tuple[str, str, Owner, str], ...] = (
    ("speech_onset", "barge_in_heard", "model", "VAD onset to SpeechStarted at the transport"),
    ("barge_in_heard", "clear_sent", "engine", "conductor + clear on the socket"),
)
TOTALS = (("speech_end", "first_audio_out", "voice-to-voice (engine side)"),
          ("speech_onset", "clear_sent", "barge-in: speech onset to clear sent"))


@dataclass
class Reply:
    """One reply's trace: when each stage was reached."""

    call: str
    gen: int
    stages: dict[str, int]  # stage -> t_ns (the first, if stamped twice)

    @property
    def answers_caller(self) -> bool:
        return "speech_end" in self.stages and "reply_discarded" not in self.stages

    @property
    def speculative(self) -> bool:
        return "reply_provisional" in self.stages

    def segments(self) -> tuple[tuple[str, str, Owner, str], ...]:
        """The segments of this reply's critical path."""
        committed, ready = self.stages.get("reply_committed"), self.stages.get("tts_first_audio")
        if committed is None:
            return REPLY_SEGMENTS
        return HELD_SEGMENTS if ready is not None and ready <= committed else CHAIN_SEGMENTS

    @property
    def barged_in(self) -> bool:
        return "clear_sent" in self.stages and "speech_onset" in self.stages

    def ms(self, a: str, b: str) -> float | None:
        if a in self.stages and b in self.stages:
            return (self.stages[b] - self.stages[a]) / 1e6
        return None


def replies(events: Iterable[TraceEvent]) -> list[Reply]:
    by_reply: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
    for e in events:
        by_reply[(e.call, e.gen)].setdefault(e.stage, e.t_ns)
    return [Reply(call, gen, stages) for (call, gen), stages in by_reply.items()]


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {"n": len(values), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def summarize(all_replies: list[Reply]) -> dict[str, Any]:
    """Per-segment and total percentiles (ms) over the replies that answered the caller, and over barge-ins."""
    answered = [r for r in all_replies if r.answers_caller]
    barged = [r for r in all_replies if r.barged_in]
    found: dict[str, tuple[Owner, str, list[float]]] = {}
    for a, b, owner, what in (*REPLY_SEGMENTS, *HELD_SEGMENTS, *CHAIN_SEGMENTS, *STT_SEGMENTS, *BARGE_IN_SEGMENTS):
        found.setdefault(f"{a}->{b}", (owner, what, []))
    for r in answered:
        for a, b, _, _ in (*r.segments(), *STT_SEGMENTS):
            if (v := r.ms(a, b)) is not None:
                found[f"{a}->{b}"][2].append(v)
    for r in barged:
        for a, b, _, _ in BARGE_IN_SEGMENTS:
            if (v := r.ms(a, b)) is not None:
                found[f"{a}->{b}"][2].append(v)
    segments = {key: {"owner": owner, "what": what, **percentiles(values)}
                for key, (owner, what, values) in found.items()}
    totals = {}
    for a, b, what in TOTALS:
        group = barged if a == "speech_onset" else answered
        totals[f"{a}->{b}"] = {"what": what, **percentiles([v for r in group if (v := r.ms(a, b)) is not None])}
    overhead, baseline = [], []
    for r in answered:
        path = r.segments()
        parts = [r.ms(a, b) for a, b, owner, _ in path if owner == "engine"]
        if all(p is not None for p in parts):
            overhead.append(sum(p for p in parts if p is not None))
        if r.ms("speech_end", "first_audio_out") is not None:
            baseline.append(sum(v for a, b, owner, _ in path if owner != "engine" and (v := r.ms(a, b)) is not None))
    speculative = [r for r in all_replies if r.speculative]
    thrown = [r for r in speculative if "reply_discarded" in r.stages]
    return {"replies": len(all_replies), "answered": len(answered), "barge_ins": len(barged),
            "speculative": {"started": len(speculative), "committed": sum("reply_committed" in r.stages
                                                                           for r in speculative),
                            "thrown_away": len(thrown),
                            "ready_before_the_turn_ended": sum(r.segments() is HELD_SEGMENTS for r in speculative
                                                               if r.answers_caller),
                            "thrown_away_ran_ms": percentiles([v for r in thrown
                                                               if (v := r.ms("reply_requested", "reply_discarded"))
                                                               is not None])},
            "segments": segments, "totals": totals,
            "engine_overhead_ms": {"what": "sum of engine-owned segments per answered reply", **percentiles(overhead)},
            "models_and_policy_ms": {"what": "sum of model- and policy-owned segments per answered reply",
                                     **percentiles(baseline)}}


def waterfall(reply: Reply) -> list[str]:
    """One reply's stages as text: offset from its first stage and the step from the one before."""
    order = sorted(reply.stages.items(), key=lambda kv: kv[1])
    t0 = order[0][1]
    lines = [f"call {reply.call} reply {reply.gen}"]
    prev = t0
    for stage, t in order:
        offset, step = (t - t0) / 1e6, (t - prev) / 1e6
        bar = "#" * min(60, max(1, round(step / 20))) if step > 0 else ""
        lines.append(f"  {stage:<20} {offset:8.1f} ms  +{step:7.1f}  {bar}")
        prev = t
    return lines


def report(all_replies: list[Reply], waterfalls: int = 5) -> str:
    s = summarize(all_replies)
    spec = s["speculative"]
    out = [f"{s['replies']} replies, {s['answered']} answering the caller, {s['barge_ins']} barge-ins; "
           f"{spec['started']} started at a pause: {spec['committed']} committed "
           f"({spec['ready_before_the_turn_ended']} ready before the turn ended), {spec['thrown_away']} thrown away"
           + (f" after a median {spec['thrown_away_ran_ms']['p50']:.0f} ms" if spec["thrown_away"] else ""), ""]
    answered = [r for r in all_replies if r.answers_caller]
    for reply in answered[-waterfalls:]:
        out += [*waterfall(reply), ""]
    out.append(f"{'segment (ms)':<44} {'owner':<7} {'n':>4} {'p50':>8} {'p95':>8} {'p99':>8}")
    out.append("-" * 84)
    rows = [*s["segments"].items(), *((row["what"], row) for row in s["totals"].values()),
            ("engine overhead (sum of engine segments)", s["engine_overhead_ms"])]
    for name, row in rows:
        if row["n"] == 0:
            out.append(f"{name:<44} {row.get('owner', ''):<7} {0:>4}")
            continue
        out.append(f"{name:<44} {row.get('owner', ''):<7} {row['n']:>4} {row['p50']:>8.1f} {row['p95']:>8.1f} "
                   f"{row['p99']:>8.1f}")
    return "\n".join(out)


def perfetto(all_replies: list[Reply]) -> dict[str, Any]:
    """A Chrome/Perfetto trace: one process row per call, one thread per owner, a slice per segment."""
    events: list[dict[str, Any]] = []
    pids: dict[str, int] = {}
    tids = {"policy": 1, "model": 2, "engine": 3}
    t_min = min((t for r in all_replies for t in r.stages.values()), default=0)
    for reply in all_replies:
        if reply.call not in pids:
            pids[reply.call] = pid = len(pids) + 1
            events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": f"call {reply.call}"}})
            for owner, tid in tids.items():
                events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": owner}})
        pid = pids[reply.call]
        for a, b, owner, what in (*REPLY_SEGMENTS, *BARGE_IN_SEGMENTS):
            if a in reply.stages and b in reply.stages:
                start, end = reply.stages[a], reply.stages[b]
                events.append({"ph": "X", "name": f"{a}->{b}", "cat": owner, "pid": pid, "tid": tids[owner],
                               "ts": (start - t_min) / 1000, "dur": (end - start) / 1000,
                               "args": {"gen": reply.gen, "what": what}})
        for stage, t in reply.stages.items():
            events.append({"ph": "i", "s": "t", "name": stage, "pid": pid, "tid": tids["engine"],
                           "ts": (t - t_min) / 1000, "args": {"gen": reply.gen}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_perfetto(all_replies: list[Reply], path: Path) -> None:
    path.write_text(json.dumps(perfetto(all_replies)))
