"""A turn's prefill in llama.cpp: how many threads read the caller's new words in, on an idle box and beside load.

Each request is what the llm process sends at the end of a turn: the call's slot was prepared with the
dialogue up to where the caller's words go (`Prepare`, as at speech start), then the dialogue plus the
caller's question streams. First token = stream() called -> first delta (the prefill of the new tokens and
one decoded token); per token = the mean gap between the later deltas. Every setting runs `--requests`
questions, growing the dialogue as a call does, first on an idle box, then with a busy-loop process holding
one core (what the TTS or the speech process of another call does to the llm on a 2-core box).

Settings (threads for single-token decode / threads for multi-token batches):
  1/1  the engine's shared slots (llm.threads = 1)
  1/2  the solo slot (llm.solo_prefill_threads = 2)
  2/2  both on 2 threads
Each with the model's weights as re-encoded copies (`q8_0`, the engine's, and `q4_0`; llm.requantize) and as
shipped (`q4_1`).

Run from the repository root (about 4 minutes):

    python bench/llm_prefill.py       # prints a table, writes bench/results/llm_prefill.json

`--shared` measures instead what a call pays when it shares its slot (more live calls than `llm.slots`): two
calls take turns on one slot of the engine's shared server (1 thread, the engine's weights), their dialogues
growing, so each turn finds the other call's dialogue in the slot's KV. First token per turn, with the server's
RAM prompt cache off (the whole dialogue read in again) and at `llm.prompt_cache_mib` (its own KV back from
RAM). Then six calls at once on the engine's `llm.slots` (4), call k on slot k mod 4 with one worker per slot as
the llm process has, each asking `--requests` questions 1-3 s apart, the two settings alternating twice:

    python bench/llm_prefill.py --shared     # writes bench/results/llm_prefill_shared.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import machine_info, wait_for_idle  # noqa: E402
from engine.config import LlmSection  # noqa: E402
from engine.llm import LlamaCppBackend, llama_model  # noqa: E402

QUESTIONS = ("What is the capital of France?", "Tell me about the weather in spring.",
             "How do I bake a loaf of bread at home?", "What time does the store open on Sundays?",
             "Can you recommend a good book to read?", "Why is the sky blue during the day?")
SETTINGS = ((1, 1), (1, 2), (2, 2))


def on_delta(stamps: list[float], texts: list[str], delta: str) -> bool:
    stamps.append(time.monotonic())
    texts.append(delta)
    return False  # never stop early


def measure(model: Path, threads: int, batch_threads: int, requests: int, max_tokens: int) -> dict[str, Any]:
    cfg = LlmSection()
    llama = LlamaCppBackend(model, threads=threads, prefill_threads=batch_threads, temperature=0.0, slots=1)
    dialogue: list[dict[str, str]] = [{"role": "system", "content": cfg.system_prompt}]
    first_ms: list[float] = []
    token_ms: list[float] = []
    try:
        for i in range(requests):
            question = QUESTIONS[i % len(QUESTIONS)]
            llama.prefill([*dialogue, {"role": "user", "content": ""}], 0)
            stamps: list[float] = []
            texts: list[str] = []
            started = time.monotonic()
            llama.stream([*dialogue, {"role": "user", "content": question}],
                         partial(on_delta, stamps, texts), max_tokens, 0)
            first_ms.append(1000 * (stamps[0] - started))
            if len(stamps) > 1:
                token_ms.append(1000 * (stamps[-1] - stamps[0]) / (len(stamps) - 1))
            dialogue += [{"role": "user", "content": question}, {"role": "assistant", "content": "".join(texts)}]
    finally:
        llama.close()
    return {"threads": threads, "batch_threads": batch_threads, "n": len(first_ms),
            "first_token_ms_p50": round(statistics.median(first_ms), 1),
            "first_token_ms_max": round(max(first_ms), 1),
            "per_token_ms_p50": round(statistics.median(token_ms), 1)}


def measure_shared(model: Path, cache_mib: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """Two calls' turns, alternating on one slot: each turn's first token (ms)."""
    cfg = LlmSection()
    llama = LlamaCppBackend(model, threads=cfg.threads, temperature=0.0, slots=1, prompt_cache_mib=cache_mib)
    dialogues: list[list[dict[str, str]]] = [[{"role": "system", "content": cfg.system_prompt}] for _ in range(2)]
    first_ms: list[float] = []
    tokens: list[int] = []
    try:
        for i in range(requests):
            for k, dialogue in enumerate(dialogues):
                question = QUESTIONS[(i + 3 * k) % len(QUESTIONS)]
                stamps: list[float] = []
                texts: list[str] = []
                started = time.monotonic()
                llama.stream([*dialogue, {"role": "user", "content": question}],
                             partial(on_delta, stamps, texts), max_tokens, 0)
                if i:  # the first turns find the slot empty
                    first_ms.append(1000 * (stamps[0] - started))
                dialogue += [{"role": "user", "content": question}, {"role": "assistant", "content": "".join(texts)}]
        tokens = [sum(len(m["content"].split()) for m in d) for d in dialogues]
    finally:
        llama.close()
    return {"prompt_cache_mib": cache_mib, "n": len(first_ms),
            "first_token_ms_p50": round(statistics.median(first_ms), 1),
            "first_token_ms_max": round(max(first_ms), 1), "dialogue_words_at_end": tokens}


def measure_calls(model: Path, cache_mib: int, calls: int, turns: int, seed: int) -> dict[str, Any]:
    """`calls` calls at once on the engine's `llm.slots` slots (call k on slot k mod slots, one worker per slot, as
    the llm process runs them), each asking `turns` questions 1-3 s apart: every turn's first token (ms)."""
    cfg = LlmSection()
    llama = LlamaCppBackend(model, threads=cfg.threads, temperature=0.0, slots=cfg.slots, prompt_cache_mib=cache_mib)
    workers = [threading.Lock() for _ in range(cfg.slots)]
    first_ms: list[float] = []

    def call(k: int) -> None:
        rng = random.Random(seed * 100 + k)
        dialogue = [{"role": "system", "content": cfg.system_prompt}]
        time.sleep(rng.uniform(0, 2))
        for i in range(turns):
            question = QUESTIONS[(i + k) % len(QUESTIONS)]
            stamps: list[float] = []
            texts: list[str] = []
            with workers[k % cfg.slots]:
                started = time.monotonic()
                llama.stream([*dialogue, {"role": "user", "content": question}],
                             partial(on_delta, stamps, texts), 40, k % cfg.slots)
                first_ms.append(1000 * (stamps[0] - started))
            dialogue += [{"role": "user", "content": question}, {"role": "assistant", "content": "".join(texts)}]
            time.sleep(rng.uniform(1.0, 3.0))

    threads = [threading.Thread(target=call, args=(k,)) for k in range(calls)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        llama.close()
    first_ms.sort()
    return {"prompt_cache_mib": cache_mib, "calls": calls, "slots": cfg.slots, "n": len(first_ms),
            "first_token_ms_p50": round(statistics.median(first_ms), 1),
            "first_token_ms_p95": round(first_ms[int(0.95 * (len(first_ms) - 1))], 1),
            "first_token_ms_max": round(first_ms[-1], 1)}


def shared(args: argparse.Namespace) -> None:
    model = llama_model(LlmSection())
    conditions = wait_for_idle(1.0, 600)
    rows = []
    for cache_mib in (0, LlmSection().prompt_cache_mib):
        row = measure_shared(model, cache_mib, args.requests, args.max_tokens)
        rows.append(row)
        print(f"prompt cache {cache_mib:>4} MiB: first token p50 {row['first_token_ms_p50']:7.1f} ms, "
              f"max {row['first_token_ms_max']:7.1f} ({row['n']} turns, two calls sharing one slot)", flush=True)
    calls = []
    for repeat in range(2):  # the two settings alternate
        for cache_mib in ((0, LlmSection().prompt_cache_mib) if repeat == 0 else (LlmSection().prompt_cache_mib, 0)):
            row = measure_calls(model, cache_mib, 6, args.requests, repeat)
            calls.append(row)
            print(f"prompt cache {cache_mib:>4} MiB: 6 calls at once on {row['slots']} slots, first token p50 "
                  f"{row['first_token_ms_p50']:7.1f} ms, p95 {row['first_token_ms_p95']:7.1f}, max "
                  f"{row['first_token_ms_max']:7.1f} ({row['n']} turns)", flush=True)
    result = {"benchmark": "llm_prefill --shared",
              "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "machine": machine_info(), "conditions": conditions, "model": LlmSection().model, "rows": rows,
              "ratio_first_token_p50": round(rows[1]["first_token_ms_p50"] / rows[0]["first_token_ms_p50"], 3),
              "six_calls_on_the_slots": calls}
    out = args.out if args.out != DEFAULT_OUT else ROOT / "bench" / "results" / "llm_prefill_shared.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


DEFAULT_OUT = ROOT / "bench" / "results" / "llm_prefill.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--weights", nargs="+", choices=["q8_0", "q4_0", "q4_1"], default=["q8_0", "q4_0", "q4_1"])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--shared", action="store_true", help="two calls on one slot: the RAM prompt cache off and on")
    args = ap.parse_args()
    if args.shared:
        shared(args)
        return
    # The copy is made before anything is timed.
    models = {name: llama_model(LlmSection(requantize="off" if name == "q4_1" else name))
              for name in args.weights}
    conditions = wait_for_idle(1.0, 600)
    rows = []
    for load in ("idle", "one core busy"):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load != "idle" else None
        try:
            for (name, model), (threads, batch) in [(m, s) for m in models.items() for s in SETTINGS]:
                row = {"load": load, "weights": name, **measure(model, threads, batch, args.requests,
                                                                 args.max_tokens)}
                rows.append(row)
                print(f"{load:>14}  {name}  threads {threads}/{batch}: "
                      f"first token p50 {row['first_token_ms_p50']:6.1f} ms, max {row['first_token_ms_max']:6.1f}; "
                      f"per token p50 {row['per_token_ms_p50']:5.1f} ms",
                      flush=True)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    result = {"benchmark": "llm_prefill", "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "machine": machine_info(), "conditions": conditions, "model": LlmSection().model, "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
