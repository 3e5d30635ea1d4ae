"""Does the engine know what a caller heard of a reply they cut off? Its heard report against the audio played.

When a caller talks over a reply, the engine tells the LLM what of it the caller heard (`Heard`),
and that is all of the reply the dialogue keeps. Here a synthetic caller asks for long answers and
talks over each at a different point (seeded, 0.8 to 4 s in); the LLM decodes greedily, so every engine
under test says the same replies. Each call asks `--per-call` questions (1: every cut is of a reply made
on a fresh dialogue; on one long call the 135M model, fed only what was heard of its cut replies, comes to
answer in three words, which leaves little to cut). For each cut reply it
keeps exactly the audio it played before the engine's `clear`; Whisper (base, 16 kHz) transcribes
it; the engine's heard report comes from the call's recording (`events.jsonl`). Both go through
bench/wer.py's normaliser and are compared two ways:

- `words_apart`: the word edit distance between the report and the transcript of the played audio. Every
  mishearing of the judge counts here too ("and detail" for "in detail" is one word apart, though the
  report is right).
- `cut_words_apart`: how many words apart the two place the cut in the reply. The transcript is aligned
  with the reply's words as the engine said them (its `Spoken` spans, in the recording) to find how far
  into the reply it reaches: the reply prefix closest to it by edit distance. The report is a prefix of
  the reply, so the two positions are comparable word for word, and a misheard word no longer counts.
  Whisper still completes a word cut in half, so the judge may place the cut one word late.

Each engine under test runs from its own checkout (`--base DIR` adds a baseline, e.g. a git
worktree of an earlier commit), alternately, on the same voices and cut points.

    python bench/heard.py --base /tmp/base     # prints a table, writes bench/results/heard.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import soxr  # noqa: E402

from bench.common import loadavg, machine_info, wait_for_idle  # noqa: E402
from bench.e2e import AUTH, PUBLIC, Engine  # noqa: E402
from bench.wer import align, normalise  # noqa: E402
from engine.stt import WhisperTranscriber, resolve_model  # noqa: E402
from tools.caller import SyntheticCaller, piper_speech  # noqa: E402

ASKS = ("Tell me a long story about a dog who finds a treasure.", "Describe your perfect summer day in detail.",
        "Explain how a rainbow forms, step by step.", "Tell me about the history of bread.",
        "Describe a walk through a busy city market.", "Tell me a story about a cat who travels the world.")
INTERRUPT = "Wait, hold on a second."


class RecordingEngine(Engine):
    """An engine under test that records its calls, for their heard reports."""

    def __init__(self, label: str, root: Path, work: Path, settings: list[str]) -> None:
        self.recordings = work / "recordings"
        super().__init__(label, root, work, [f"transport.recordings_dir={self.recordings}", *settings])


async def one_call(engine: RecordingEngine, voices: dict[str, Any], cuts: list[float],
                   first_ask: int = 0) -> list[dict[str, Any]]:
    """Ask, let the answer play `cut` seconds, talk over it; what was played of each cut answer."""
    rows: list[dict[str, Any]] = []
    async with SyntheticCaller(f"http://127.0.0.1:{engine.port}", public_url=PUBLIC, auth_token=AUTH) as c:
        await c.connect(await c.dial(), continuous=True)
        await c.first_media_after(0.0, 30)
        await c.wait_quiet(1.0, 30)  # the greeting
        for k, cut in enumerate(cuts):
            ask = ASKS[(first_ask + k) % len(ASKS)]
            sent_before = len(c.sent_media)
            await c.send_audio(voices[ask])
            _, speech_end = c.speech_bounds(sent_before, voices[ask])
            await c.first_media_after(speech_end, 30)
            played_before = len(c.heard)
            heard_s = c.heard_seconds
            await c.wait_until(lambda h=heard_s, t=cut: c.heard_seconds >= h + t or  # type: ignore[misc]
                               (c.playback.idle and time.monotonic() - c.received_media_times[-1][0] > 1.0),
                               60, "the answer to play")
            if c.heard_seconds < heard_s + cut:
                await c.wait_quiet(1.5, 60)
                rows.append({"ask": ask, "cut_s": cut, "skipped": "the answer ended first"})
                continue
            clears = len(c.clears)
            talking = asyncio.ensure_future(c.send_audio(voices[INTERRUPT]))
            try:
                await c.wait_until(lambda n=clears: len(c.clears) > n, 10, "clear")  # type: ignore[misc]
            except TimeoutError:  # the answer ended as the caller spoke: nothing was cut
                await talking
                await c.wait_quiet(1.5, 60)
                rows.append({"ask": ask, "cut_s": cut, "skipped": "no clear: the answer ended as the caller spoke"})
                continue
            clear_t = c.clears[clears]
            played = [chunk for t, chunk in c.heard[played_before:] if t < clear_t]
            await talking
            await c.wait_quiet(1.5, 60)  # the answer to the interruption plays out
            rows.append({"ask": ask, "cut_s": cut, "played": np.concatenate(played) if played else np.zeros(0)})
        await c.hangup()
        call_sid = c.call_sid
    events = [json.loads(line) for path in engine.recordings.glob(f"{call_sid}*/events.jsonl")
              for line in path.read_text().splitlines()]
    reports = [e for e in events if e.get("event") == "heard"]
    spans: dict[int, dict[int, str]] = {}
    for e in events:
        if e.get("event") == "Spoken":
            spans.setdefault(e["gen"], {})[e["index"]] = e["text"]
    cut_rows = [r for r in rows if "played" in r]
    if len(reports) != len(cut_rows):
        raise SystemExit(f"{engine.label}: {len(reports)} heard reports for {len(cut_rows)} cut replies")
    for row, report in zip(cut_rows, reports, strict=True):
        row["heard_report"] = report["text"]
        said = spans.get(report["gen"], {})
        row["said"] = " ".join(said[i] for i in sorted(said))
    return rows


def reach(transcript: list[str], said: list[str]) -> int:
    """How many of the reply's words `transcript` covers: the length of the prefix of `said` closest to it by
    word edit distance (of equally close prefixes, the one nearest the transcript's length)."""
    prev = list(range(len(said) + 1))  # row i: distances from transcript[:i] to every prefix said[:j]
    for i, word in enumerate(transcript, 1):
        row = [i] + [0] * len(said)
        for j in range(1, len(said) + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (word != said[j - 1]))
        prev = row
    return min(range(len(said) + 1), key=lambda j: (prev[j], abs(j - len(transcript))))


def score(rows: list[dict[str, Any]], stt: WhisperTranscriber) -> dict[str, Any]:
    apart: list[int] = []
    cut_apart: list[int] = []
    out = []
    for row in rows:
        if "played" not in row:
            out.append({k: v for k, v in row.items()})
            continue
        audio = soxr.resample(row["played"].astype(np.float32) / 32768, 8000, 16000).astype(np.float32)
        played_text = stt.transcribe(audio) if len(audio) else ""
        distance = align(normalise(played_text), normalise(row["heard_report"])).edits
        played_reach = reach(normalise(played_text), normalise(row["said"]))
        cut_distance = abs(played_reach - len(normalise(row["heard_report"])))
        apart.append(distance)
        cut_apart.append(cut_distance)
        out.append({"ask": row["ask"], "cut_s": row["cut_s"], "played_s": round(len(row["played"]) / 8000, 2),
                    "said": row["said"], "played_text": played_text, "heard_report": row["heard_report"],
                    "words_apart": distance, "played_reach_words": played_reach, "cut_words_apart": cut_distance})
    return {"cut_replies": len(apart), **summary(apart, "words_apart"), **summary(cut_apart, "cut_words_apart"),
            "replies": out}


def summary(apart: list[int], name: str) -> dict[str, Any]:
    within = sum(d <= 1 for d in apart)
    return {f"{name}_within_1": within, f"{name}_share_within_1": within / len(apart) if apart else None,
            f"{name}_p50": statistics.median(apart) if apart else None,
            f"{name}_max": max(apart) if apart else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, help="a checkout of the engine to compare with (run first)")
    ap.add_argument("--cuts", type=int, default=20, help="replies cut off per engine")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--per-call", type=int, default=1, help="cuts made on each call")
    ap.add_argument("--json", default=str(ROOT / "bench/results/heard.json"))
    args = ap.parse_args()
    idle = wait_for_idle(1.0, 120)
    rng = random.Random(args.seed)
    cuts = [round(rng.uniform(0.8, 4.0), 2) for _ in range(args.cuts)]
    voices = {text: piper_speech(text, rate=8000) for text in [*ASKS, INTERRUPT]}
    roots = ([("base", args.base)] if args.base else []) + [("engine", ROOT)]
    results: dict[str, Any] = {}
    for label, root in roots:
        work = Path(tempfile.mkdtemp(prefix=f"heard-{label}-"))
        # Greedy decoding: both engines say the same replies, so what differs is what each reports heard.
        engine = RecordingEngine(label, root, work, ["conversation.greeting=Hello.", "llm.max_sentences=6",
                                                     "conversation.max_call_s=3600",  # one call for all the cuts
                                                     "llm.max_tokens=160", "llm.temperature=0.0"])
        try:
            engine.wait_healthy(180)
            rows = []
            for first in range(0, len(cuts), args.per_call):
                rows += asyncio.run(one_call(engine, voices, cuts[first:first + args.per_call], first))
            results[label] = {"rows": rows}
        finally:
            engine.stop()
    stt = WhisperTranscriber(resolve_model("base", Path("~/.cache/voice-engine").expanduser()))
    for label in results:
        results[label] = score(results[label]["rows"], stt)
    print(f"{'engine':<8}{'measure':<17}{'cut':>5}{'<=1 word':>10}{'share':>8}{'p50':>6}{'max':>6}")
    for label, r in results.items():
        for name in ("words_apart", "cut_words_apart"):
            share = r[f"{name}_share_within_1"]
            print(f"{label:<8}{name:<17}{r['cut_replies']:>5}{r[f'{name}_within_1']:>10}"
                  f"{share if share is None else f'{share:.0%}':>8}{r[f'{name}_p50']!s:>6}{r[f'{name}_max']!s:>6}")
        for row in r["replies"]:
            if row.get("cut_words_apart", 0) > 1:
                print(f"    cut at {row['cut_s']} s: heard report {row['heard_report']!r}\n"
                      f"{'':>18}played       {row['played_text']!r}\n{'':>18}said         {row['said']!r}")
    out = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_info(), "idle_wait": idle, "loadavg_1m_at_end": loadavg(), "cuts_s": cuts,
           "per_call": args.per_call,
           "base": str(args.base) if args.base else None, "stt": "whisper base int8", "results": results}
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
