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
- `timed_words_apart`: no judge. The caller's player counts the audio it played before the `clear`; the
  recording's `Spoken` spans say where Piper put each word in the reply's frames (`words_ms`). A word was
  heard once its middle played (the engine's own rule), and the report is compared with those words. This
  checks the engine's account of what played (frames, play-out clock, pacing lead, span boundaries); a word
  time Piper got wrong it cannot see, which the transcript measures can.

`--check-judge N` runs no engine: it cuts the engine's own voice at known points and measures the judge
alone against the word-time truth. What the judge misses there, it also counts against the engine above.

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
DEFAULT_JSON = str(ROOT / "bench/results/heard.json")


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
    spans: dict[int, dict[int, dict[str, Any]]] = {}
    for e in events:
        if e.get("event") == "Spoken":
            spans.setdefault(e["gen"], {})[e["index"]] = e
    cut_rows = [r for r in rows if "played" in r]
    if len(reports) != len(cut_rows):
        raise SystemExit(f"{engine.label}: {len(reports)} heard reports for {len(cut_rows)} cut replies")
    for row, report in zip(cut_rows, reports, strict=True):
        row["heard_report"] = report["text"]
        said = [span for _, span in sorted(spans.get(report["gen"], {}).items())]
        row["said"] = " ".join(span["text"] for span in said)
        row["timed_reach_words"] = timed_reach(said, len(row["played"]) / 8)
    return rows


def timed_reach(spans: list[dict[str, Any]], played_ms: float) -> int | None:
    """How many of the reply's words (normalised) were heard in its first `played_ms` of audio, by the voice's own
    word times (each `Spoken` span's `words_ms`, placed by its first frame) and the engine's rule: a word was heard
    once its middle played (engine/reply_track.words_timed). None if the voice did not time every word.

    This truth needs no judge: it is what the caller's own player played, against where Piper put each word in the
    frames it made. What it cannot catch is a wrong word time; `--check-judge` and the transcript measures can."""
    if not spans:
        return None
    first = spans[0]["seq_first"]
    heard: list[str] = []
    for span in spans:
        words, times = span["text"].split(), span.get("words_ms") or []
        if len(times) != len(words):
            return None
        offset_ms = (span["seq_first"] - first) * 20
        for word, (start, end) in zip(words, times, strict=True):
            if offset_ms + (start + end) / 2 > played_ms:
                return len(normalise(" ".join(heard)))
            heard.append(word)
    return len(normalise(" ".join(heard)))


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
    timed_apart: list[int] = []
    out = []
    for row in rows:
        if "played" not in row:
            out.append({k: v for k, v in row.items()})
            continue
        audio = soxr.resample(row["played"].astype(np.float32) / 32768, 8000, 16000).astype(np.float32)
        played_text = stt.transcribe(audio) if len(audio) else ""
        distance = align(normalise(played_text), normalise(row["heard_report"])).edits
        played_reach = reach(normalise(played_text), normalise(row["said"]))
        report_words = len(normalise(row["heard_report"]))
        cut_distance = abs(played_reach - report_words)
        timed_distance = None if row["timed_reach_words"] is None else abs(row["timed_reach_words"] - report_words)
        apart.append(distance)
        cut_apart.append(cut_distance)
        if timed_distance is not None:
            timed_apart.append(timed_distance)
        out.append({"ask": row["ask"], "cut_s": row["cut_s"], "played_s": round(len(row["played"]) / 8000, 2),
                    "said": row["said"], "played_text": played_text, "heard_report": row["heard_report"],
                    "words_apart": distance, "played_reach_words": played_reach, "cut_words_apart": cut_distance,
                    "timed_reach_words": row["timed_reach_words"], "timed_words_apart": timed_distance})
    return {"cut_replies": len(apart), **summary(apart, "words_apart"), **summary(cut_apart, "cut_words_apart"),
            **summary(timed_apart, "timed_words_apart"), "timed_replies": len(timed_apart), "replies": out}


# Replies the bundled LLM gave in these runs (bench/results/heard_cut_position.json), one of them looping.
JUDGE_TEXTS = (
    "The story of a dog who finds a treasure is a classic example of a classic tale of adventure. It's a tale of a "
    "dog who finds a treasure that's lost to the depths of the ocean.",
    "I'm so glad you're enjoying my summer day. I'm so glad you're enjoying my summer day. I'm so glad you're "
    "enjoying my summer day.",
    "A rainbow forms when light from the sun interacts with water droplets in the air, causing them to reflect and "
    "create a beautiful rainbow.",
    "The history of bread is a tale of innovation and perseverance. It all began with the ancient Egyptians, who used "
    "a type of flour made from wheat to make bread.",
    "The market is bustling with people from all over the world, from bustling cafes to small, family-run shops.",
    "One day, a cat named Luna decided to visit a place called the Luminaria in the land of the moon.",
)


def check_judge(stt: WhisperTranscriber, cuts_per_text: int, seed: int) -> dict[str, Any]:
    """The bench's judge (`reach` of a free transcript) against known cuts, no engine: each reply of JUDGE_TEXTS
    said by the engine's own voice, taken through the phone path (8 kHz μ-law), cut at seeded points 0.8-4 s in.
    The truth is the engine's own rule (engine/reply_track.words_timed): a word was heard once its middle played,
    by Piper's phoneme durations. How far the judge alone is from the truth bounds what the engine's share can show."""
    from engine.codec import mulaw_to_pcm16, pcm16_to_mulaw
    from engine.config import Config
    from engine.piper_stream import StreamingPiper
    from engine.tts import bundled_piper_voice

    piper = StreamingPiper(bundled_piper_voice(), Path(Config().tts.model_cache_dir).expanduser())
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for text in JUDGE_TEXTS:
        plan = piper.planned(text)
        if plan.words is None:
            raise SystemExit(f"the voice gave no word times for {text!r}")
        voice = np.concatenate(list(plan.audio)).astype(np.float32) / 32768
        phone = mulaw_to_pcm16(pcm16_to_mulaw(np.clip(soxr.resample(voice, piper.sample_rate, 8000) * 32768,
                                                      -32768, 32767).astype(np.int16)))
        words = text.split()
        for _ in range(cuts_per_text):
            cut = min(rng.uniform(0.8, 4.0), len(phone) / 8000 - 0.3)
            played = phone[:int(cut * 8000)].astype(np.float32) / 32768
            audio = soxr.resample(played, 8000, 16000).astype(np.float32)
            heard = sum((start + end) / 2 <= cut * piper.sample_rate for start, end in plan.words)
            truth = len(normalise(" ".join(words[:heard])))
            free = reach(normalise(stt.transcribe(audio)), normalise(text))
            rows.append({"text": text, "cut_s": round(cut, 2), "truth_words": truth, "transcript_reach": free})
    return {"cuts": len(rows), **summary([abs(r["transcript_reach"] - r["truth_words"]) for r in rows],
                                         "judge_words_apart"), "rows": rows}


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
    ap.add_argument("--json", default=DEFAULT_JSON)
    ap.add_argument("--check-judge", type=int, default=0, metavar="N",
                    help="no engine: check the judge on N known cuts of each of JUDGE_TEXTS")
    args = ap.parse_args()
    idle = wait_for_idle(1.0, 120)
    cache = Path("~/.cache/voice-engine").expanduser()
    if args.check_judge:
        base = resolve_model("base", cache)
        check = check_judge(WhisperTranscriber(base), args.check_judge, args.seed)
        print(f"judge against known cuts: {check['judge_words_apart_within_1']} of {check['cuts']} within 1 word "
              f"({check['judge_words_apart_share_within_1']:.0%}), p50 {check['judge_words_apart_p50']}, "
              f"max {check['judge_words_apart_max']} words apart")
        for row in check["rows"]:
            if abs(row["transcript_reach"] - row["truth_words"]) > 1:
                print(f"    cut at {row['cut_s']} s: {row['truth_words']} words heard, the judge says "
                      f"{row['transcript_reach']}: {row['text'][:60]!r}")
        out = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine_info(), "idle_wait": idle, "seed": args.seed, "stt": "whisper base int8", **check}
        path = Path(args.json if args.json != DEFAULT_JSON else ROOT / "bench/results/heard_judge.json")
        path.write_text(json.dumps(out, indent=2))
        print(f"wrote {path}")
        return
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
    stt = WhisperTranscriber(resolve_model("base", cache))
    for label in results:
        results[label] = score(results[label]["rows"], stt)
    print(f"{'engine':<8}{'measure':<17}{'cut':>5}{'<=1 word':>10}{'share':>8}{'p50':>6}{'max':>6}")
    for label, r in results.items():
        for name in ("words_apart", "cut_words_apart", "timed_words_apart"):
            share = r[f"{name}_share_within_1"]
            n = r["timed_replies"] if name == "timed_words_apart" else r["cut_replies"]
            print(f"{label:<8}{name:<17}{n:>5}{r[f'{name}_within_1']:>10}"
                  f"{share if share is None else f'{share:.0%}':>8}{r[f'{name}_p50']!s:>6}{r[f'{name}_max']!s:>6}")
        for row in r["replies"]:
            if row.get("cut_words_apart", 0) > 1 or (row.get("timed_words_apart") or 0) > 1:
                print(f"    cut at {row['cut_s']} s (reach: by transcript {row['played_reach_words']}, by word times "
                      f"{row['timed_reach_words']} words): heard report {row['heard_report']!r}\n"
                      f"{'':>18}played       {row['played_text']!r}\n{'':>18}said         {row['said']!r}")
    out = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_info(), "idle_wait": idle, "loadavg_1m_at_end": loadavg(), "cuts_s": cuts,
           "per_call": args.per_call,
           "base": str(args.base) if args.base else None, "stt": "whisper base int8", "results": results}
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
