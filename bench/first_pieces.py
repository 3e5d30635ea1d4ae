"""First pieces first (llm.yield_to_first_pieces), the LLM alone: how long a reply's first piece takes beside others.

Six calls at once on the engine's shared llama.cpp server (`llm.slots` slots, 1 thread), call k on slot
k mod slots with one worker per slot, as the llm process runs them. Each call asks `--turns` questions,
`--gap-s` apart (after its previous reply is made; by default 3-6 s: its audio playing, then the caller's
next question), through the llm process's own code: `Thinking` turns a
`Respond` into a job, `generate` makes the reply with `Reply`'s chunker, `max_sentences` and
`max_tokens` at the engine's settings, greedy, so both sides make the same replies. Measured per reply,
from when it is asked for (so a call whose slot's worker is busy with another call's reply, or with one that
gave way and waits, counts that wait): to its first piece (what the TTS waits for) and to its last piece; and
how often, and for how long, replies gave way. The two settings alternate `--repeat` times with the same
seeds; no other process runs.

    python bench/first_pieces.py      # prints a table, writes bench/results/first_pieces.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import machine_info, wait_for_idle  # noqa: E402
from engine.config import LlmSection  # noqa: E402
from engine.first_pieces import FirstPieces  # noqa: E402
from engine.llm import LlamaCppBackend, llama_model  # noqa: E402
from engine.thinking import Out, Reply, Stage, Thinking, generate  # noqa: E402
from ipc.schema import CallStarted, Respond, Sentence  # noqa: E402

QUESTIONS = ("What is the capital of France?", "Tell me about the weather in spring.",
             "How do I bake a loaf of bread at home?", "What time does the store open on Sundays?",
             "Can you recommend a good book to read?", "Why is the sky blue during the day?",
             "What should I pack for a weekend trip?", "How do I reset my password?")


def stamp(stamps: dict[str, float], out: Out) -> None:
    """When a reply reached each stage, and when its latest piece came."""
    now = time.monotonic()
    if isinstance(out, Stage):
        stamps.setdefault(out.name, now)
    elif isinstance(out, Sentence):
        stamps["last_piece"] = now


def run_side(llama: LlamaCppBackend, cfg: LlmSection, first_pieces: FirstPieces, calls: int, turns: int,
             seed: int, gap_s: tuple[float, float]) -> dict[str, Any]:
    thinking = Thinking(cfg.system_prompt, slots=cfg.slots)
    workers = [threading.Lock() for _ in range(cfg.slots)]
    first_ms: list[float] = []
    whole_ms: list[float] = []

    def call(k: int) -> None:
        rng = random.Random(seed * 100 + k)
        call_id = f"CA{k}"
        time.sleep(rng.uniform(0, 2))
        for turn in range(1, turns + 1):
            (job,) = thinking.handle(Respond(call_id=call_id, gen=turn, caller_text=QUESTIONS[(turn + k) % 8]))
            stamps: dict[str, float] = {}
            asked = time.monotonic()  # before the slot's worker is free: a call sharing it waits for the one in it
            with workers[job.slot]:
                generate(Reply(job, first_clause_words=cfg.first_clause_words, max_sentences=cfg.max_sentences),
                         llama, cfg.max_tokens, partial(stamp, stamps), first_pieces)
            if "llm_first_sentence" in stamps:
                first_ms.append(1000 * (stamps["llm_first_sentence"] - asked))
                whole_ms.append(1000 * (stamps["last_piece"] - asked))
            time.sleep(rng.uniform(*gap_s))

    for k in range(calls):
        thinking.handle(CallStarted(call_id=f"CA{k}", slot=k, epoch=1, inbound_rate=8000, live=k + 1))
    threads = [threading.Thread(target=call, args=(k,)) for k in range(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"yield": first_pieces.enabled, "seed": seed, "replies": len(first_ms),
            "first_piece_ms": summary(first_ms), "whole_reply_ms": summary(whole_ms),
            "gave_way": first_pieces.yields, "gave_way_ms": first_pieces.yielded_ms,
            "first_piece_samples_ms": [round(v, 1) for v in first_ms],
            "whole_reply_samples_ms": [round(v, 1) for v in whole_ms]}


def summary(ms: list[float]) -> dict[str, float]:
    a = np.array(ms)
    return {"n": int(a.size), "p50": round(float(np.median(a)), 1), "p90": round(float(np.percentile(a, 90)), 1),
            "p95": round(float(np.percentile(a, 95)), 1), "max": round(float(a.max()), 1)}


def pooled(rows: list[dict[str, Any]], enabled: bool) -> dict[str, Any]:
    """One side's replies over every repeat."""
    mine = [r for r in rows if r["yield"] == enabled]
    return {"yield": enabled, "first_piece_ms": summary([v for r in mine for v in r["first_piece_samples_ms"]]),
            "whole_reply_ms": summary([v for r in mine for v in r["whole_reply_samples_ms"]])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=6)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--gap-s", type=float, nargs=2, default=[3.0, 6.0], help="seconds between a call's turns")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "first_pieces.json")
    args = ap.parse_args()
    cfg = LlmSection(temperature=0.0)
    llama = LlamaCppBackend(llama_model(cfg), n_ctx=cfg.context_per_call, threads=cfg.threads, temperature=0.0,
                            slots=cfg.slots, prompt_cache_mib=cfg.prompt_cache_mib)
    conditions = wait_for_idle(1.0, 600)
    rows = []
    try:
        for repeat in range(args.repeat):
            for enabled in ((False, True) if repeat % 2 == 0 else (True, False)):
                row = run_side(llama, cfg, FirstPieces(enabled=enabled), args.calls, args.turns, repeat,
                               tuple(args.gap_s))
                rows.append(row)
                f, w = row["first_piece_ms"], row["whole_reply_ms"]
                print(f"yield {'on ' if enabled else 'off'} seed {repeat}: first piece p50 {f['p50']:6.1f} p95 "
                      f"{f['p95']:6.1f} max {f['max']:6.1f} ms; whole reply p50 {w['p50']:6.1f} p95 {w['p95']:6.1f}; "
                      f"gave way {row['gave_way']} times, {row['gave_way_ms']} ms", flush=True)
    finally:
        llama.close()
    on, off = pooled(rows, True), pooled(rows, False)
    ratios = {key: {q: round(on[key][q] / off[key][q], 3) for q in ("p50", "p90", "p95")}
              for key in ("first_piece_ms", "whole_reply_ms")}
    for side in (off, on):
        f, w = side["first_piece_ms"], side["whole_reply_ms"]
        print(f"pooled, yield {'on ' if side['yield'] else 'off'}: first piece p50 {f['p50']:6.1f} p90 {f['p90']:6.1f} "
              f"p95 {f['p95']:6.1f} ms (n {f['n']}); whole reply p50 {w['p50']:6.1f} p95 {w['p95']:6.1f}")
    print(f"on / off: {ratios}")
    result = {"benchmark": "first_pieces", "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "machine": machine_info(), "conditions": conditions, "calls": args.calls, "turns": args.turns,
              "gap_s": args.gap_s,
              "slots": cfg.slots, "pooled": [off, on], "ratios_on_over_off": ratios, "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
