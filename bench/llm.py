"""LLM latency for a phone assistant, per backend of `engine/llm.py`: time to first token (cold, warm,
prefix cache defeated), decode speed, time to the first speakable clause, cancel latency.

Each request is [system prompt, one caller question] through the backend's own `stream()`. Cold: the first
request after constructing the backend (`--constructs` times). Warm: `--requests` requests sharing the system
prompt, whose KV prefix llama.cpp keeps. Defeated: a new reference number opens the system prompt every time,
so nothing is reused. Cancel: on_delta returns True on the `--cancel-after`-th delta; latency = that return ->
stream() returning. TTFT = stream() called -> first non-empty delta. Deltas go through
`SentenceChunker(first_min_words=4)` as in the llm process; first clause = first delta -> its first piece
(or `flush()` when a reply ends with no boundary; counted). Decode tokens/s is llama.cpp's own, from the
final chunk's `timings` (the real token count); otherwise deltas-1 over the first-to-last delta time.
`OpenAIBackend` runs only with `--openai-url` (no such server exists on this box). The run first waits (up
to 10 minutes) for the 1-minute load average to fall below `--max-load`, and records it.

Run from the repository root (about 1.5 minutes with the defaults):

    python bench/llm.py                    # prints a table, writes bench/results/llm.json
    python bench/llm.py --openai-url http://gpu-host:8000/v1 --openai-model google/gemma-3-27b-it
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# As bench/ipc.py does: `python bench/llm.py` puts bench/ first on sys.path; import from the repository root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.common import cpu_seconds, loadavg, machine_info, wait_for_idle  # noqa: E402
from engine.chunker import SentenceChunker  # noqa: E402
from engine.llm import LlamaCppBackend, LlmBackend, LlmError, OpenAIBackend, resolve_gguf  # noqa: E402

SYSTEM_PROMPT = (
    "You are Sam, the friendly phone assistant for Harbor Street Dental Clinic. The caller hears your words "
    "spoken aloud, so answer in one or two short sentences of plain speech, with no lists, markdown or emojis. "
    "You can tell callers opening hours, book, move or cancel appointments, and take messages for the "
    "dentists. If you are unsure, offer to have a staff member call them back."
)  # 66 words, like LlmSection.system_prompt but with a business around it
QUESTIONS = (
    "Hi, what time do you open tomorrow?",
    "Can I book a cleaning for next Tuesday?",
    "Do you take walk-ins?",
    "I need to cancel my appointment on Friday.",
    "Is Doctor Patel working this week?",
    "How much does a filling cost?",
    "Where do I park when I get there?",
    "Can someone call me back this afternoon?",
    "My tooth really hurts, what should I do?",
    "Are you open on Saturdays?",
)
# Appended on each pass through QUESTIONS so that no prompt repeats: llama.cpp's RAM prompt cache
# (cache_ram_mib) would restore a repeated prompt whole, question included (TTFT ~15 ms, not a real turn).
SUFFIXES = ("", " Thanks.", " Thank you.", " Please.", " Cheers.", " Okay?", " Hello?", " Sorry.")
TARGET_TTFT_MS = 50.0  # DESIGN.md: LLM first token <= 50 ms with the system prompt cached
TARGET_CLAUSE_MS = 150.0  # DESIGN.md: first speakable clause <= 150 ms after the first token


class TimingsTap:
    """Stands in for LlamaCppBackend's xllamacpp server to keep the final chunk's `timings` (the real token
    count and llama.cpp's own prefill/decode times), which `stream()` does not pass on."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.timings: dict[str, Any] = {}

    def handle_chat_completions(self, body: dict[str, Any], callback: Callable[[dict[str, Any]], bool]) -> Any:
        self.timings = {}

        def tap(chunk: dict[str, Any]) -> bool:
            if "timings" in chunk:
                self.timings = chunk["timings"]
            return callback(chunk)

        return self.server.handle_chat_completions(body, tap)


def caller_question(i: int) -> str:
    """The i-th caller question of a run, never the same text twice (for i < 80)."""
    return QUESTIONS[i % len(QUESTIONS)] + SUFFIXES[i // len(QUESTIONS) % len(SUFFIXES)]


def request(backend: LlmBackend, system: str, question: str, max_tokens: int, cancel_after: int = 0,
            tap: TimingsTap | None = None) -> dict[str, Any]:
    """One streamed reply; times in ms from stream() being called."""
    chunker = SentenceChunker(first_min_words=4)
    stamps: list[float] = []
    clause: list[float] = []
    text: list[str] = []
    cancelled_at: list[float] = []

    def on_delta(delta: str) -> bool:
        stamps.append(time.perf_counter())
        text.append(delta)
        if chunker.push(delta) and not clause:
            clause.append(time.perf_counter())
        if cancel_after and len(stamps) >= cancel_after:
            cancelled_at.append(time.perf_counter())
            return True
        return False

    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    t0 = time.perf_counter()
    backend.stream(messages, on_delta, max_tokens)
    t_end = time.perf_counter()
    if not stamps:
        raise LlmError(f"no reply to {question!r}")
    flushed = not clause and not cancelled_at
    if flushed and chunker.flush():
        clause.append(t_end)
    n = len(stamps)
    span = stamps[-1] - stamps[0]
    row: dict[str, Any] = {
        "ttft_ms": (stamps[0] - t0) * 1e3, "total_ms": (t_end - t0) * 1e3, "deltas": n,
        "clause_after_first_ms": (clause[0] - stamps[0]) * 1e3 if clause else None,
        "clause_from_request_ms": (clause[0] - t0) * 1e3 if clause else None,
        "clause_at_flush": flushed, "delta_tok_s": (n - 1) / span if n > 1 and span > 0 else None,
        "question": question, "reply": "".join(text)}
    if cancelled_at:
        row["cancel_ms"] = (t_end - cancelled_at[0]) * 1e3
    if tap is not None and tap.timings:
        t = tap.timings
        row.update({"tokens": t.get("predicted_n"), "tok_s": t.get("predicted_per_second"),
                    "cache_n": t.get("cache_n"), "prompt_n": t.get("prompt_n"), "prompt_ms": t.get("prompt_ms")})
    else:
        row["tok_s"] = row["delta_tok_s"]
    return row


def pct(rows: list[dict[str, Any]], key: str, q: float) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.percentile(vals, q)) if vals else None


def summarize(name: str, cold: list[dict[str, Any]], build_s: list[float], warm: list[dict[str, Any]],
              defeated: list[dict[str, Any]], cancel: list[dict[str, Any]]) -> dict[str, Any]:
    s: dict[str, Any] = {"backend": name, "construct_s": build_s,
                         "cold_ttft_ms": [r["ttft_ms"] for r in cold], "cold_ttft_p50_ms": pct(cold, "ttft_ms", 50)}
    for label, rows in (("warm", warm), ("defeated", defeated)):
        for key in ("ttft_ms", "clause_after_first_ms", "clause_from_request_ms"):
            for q in (50, 90):
                s[f"{label}_{key[:-3]}_p{q}_ms"] = pct(rows, key, q)
        s[f"{label}_prompt_tokens_p50"] = pct(rows, "prompt_n", 50)
        s[f"{label}_whole_prompt_hits"] = sum(r.get("prompt_n") == 1 for r in rows)  # should stay 0
    done, w, d = warm + defeated, s["warm_ttft_p50_ms"], s["defeated_ttft_p50_ms"]
    tokens = sum(r.get("tokens") or 0 for r in done)
    return s | {
        "tok_s_p50": pct(done, "tok_s", 50), "delta_tok_s_p50": pct(done, "delta_tok_s", 50),
        "deltas_per_token": sum(r["deltas"] for r in done) / tokens if tokens else None,
        "clause_at_flush": sum(r["clause_at_flush"] for r in done),
        "cancel_p50_ms": pct(cancel, "cancel_ms", 50), "cancel_p90_ms": pct(cancel, "cancel_ms", 90),
        "cancel_max_ms": max((r["cancel_ms"] for r in cancel), default=None),
        # A server that kept generating after a cancel would delay the next request's first token.
        "ttft_after_cancel_p50_ms": pct(cancel[1:], "ttft_ms", 50),
        "prefix_cache_speedup_p50": d / w if w and d else None}


def run_backend(name: str, make: Callable[[], LlmBackend], args: argparse.Namespace) -> dict[str, Any]:
    print(f"{name}: {args.constructs} constructions (cold) ...", flush=True)
    build_s: list[float] = []
    cold: list[dict[str, Any]] = []
    backend: LlmBackend | None = None
    tap: TimingsTap | None = None
    for i in range(args.constructs):
        backend = tap = None
        gc.collect()  # free the previous server (its threads and ~200 MB) before the next loads
        t0 = time.perf_counter()
        backend = make()
        build_s.append(time.perf_counter() - t0)
        if isinstance(backend, LlamaCppBackend):
            tap = TimingsTap(backend._server)
            backend._server = tap
        cold.append(request(backend, SYSTEM_PROMPT, caller_question(i), args.max_tokens, tap=tap))
    assert backend is not None
    qs = [caller_question(args.constructs + i) for i in range(args.requests)]
    print(f"{name}: {args.requests} warm, {args.requests} cache-defeated, {args.cancels} cancelled ...", flush=True)
    warm = [request(backend, SYSTEM_PROMPT, q, args.max_tokens, tap=tap) for q in qs]
    defeated = [request(backend, f"Call reference {1000 + 37 * i}. {SYSTEM_PROMPT}", q, args.max_tokens, tap=tap)
                for i, q in enumerate(qs)]
    cancel = [request(backend, SYSTEM_PROMPT, caller_question(args.constructs + args.requests + i), args.max_tokens,
                      cancel_after=args.cancel_after, tap=tap) for i in range(args.cancels)]
    summary = summarize(name, cold, build_s, warm, defeated, cancel)
    summary["requests"] = {"cold": cold, "warm": warm, "defeated": defeated, "cancel": cancel}
    return summary


def fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'backend':<18}{'cold':>7}{'warm p50':>9}{'p90':>6}{'defeat p50':>11}{'p90':>6}{'cache x':>8}"
            f"{'tok/s':>7}{'clause p50':>11}{'p90':>6}{'cancel p50':>11}{'max':>6}")
    print("\nms unless noted; TTFT = stream() -> first delta; clause = first delta -> first chunker piece "
          "(warm requests); cache x = defeated / warm TTFT p50")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['backend']:<18}{fmt(r['cold_ttft_p50_ms']):>7}{fmt(r['warm_ttft_p50_ms']):>9}"
              f"{fmt(r['warm_ttft_p90_ms']):>6}{fmt(r['defeated_ttft_p50_ms']):>11}{fmt(r['defeated_ttft_p90_ms']):>6}"
              f"{fmt(r['prefix_cache_speedup_p50'], '.1f'):>8}{fmt(r['tok_s_p50']):>7}"
              f"{fmt(r['warm_clause_after_first_p50_ms']):>11}{fmt(r['warm_clause_after_first_p90_ms']):>6}"
              f"{fmt(r['cancel_p50_ms'], '.1f'):>11}{fmt(r['cancel_max_ms'], '.1f'):>6}")
    for r in rows:
        n = len(r["requests"]["warm"]) + len(r["requests"]["defeated"])
        print(f"  {r['backend']}: construct {min(r['construct_s']):.2f}-{max(r['construct_s']):.2f} s; "
              f"tokens prefilled p50 warm {fmt(r['warm_prompt_tokens_p50'])} / defeated "
              f"{fmt(r['defeated_prompt_tokens_p50'])}; first clause from request p50 warm "
              f"{fmt(r['warm_clause_from_request_p50_ms'])} / defeated {fmt(r['defeated_clause_from_request_p50_ms'])}"
              f" ms; clause only at the end in {r['clause_at_flush']}/{n}; "
              f"TTFT right after a cancel p50 {fmt(r['ttft_after_cancel_p50_ms'])} ms")


def budget(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    print("\nagainst DESIGN.md budgets (ratio = measured p50 / budget):")
    for r in rows:
        ttft, clause = r["warm_ttft_p50_ms"], r["warm_clause_after_first_p50_ms"]
        out[r["backend"]] = o = {
            "ttft_p50_over_50ms": ttft / TARGET_TTFT_MS, "ttft_met": ttft <= TARGET_TTFT_MS,
            "clause_p50_over_150ms": clause / TARGET_CLAUSE_MS, "clause_met": clause <= TARGET_CLAUSE_MS}
        print(f"  {r['backend']:<18} first token (cached) {ttft:6.1f} ms = x{o['ttft_p50_over_50ms']:.2f} "
              f"{'MET' if o['ttft_met'] else 'MISSED'};  first clause +{clause:6.1f} ms = "
              f"x{o['clause_p50_over_150ms']:.2f} {'MET' if o['clause_met'] else 'MISSED'}")
    return out


def versions() -> dict[str, str]:
    return {"numpy": np.__version__, "xllamacpp": importlib.metadata.version("xllamacpp")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="llama.cpp thread counts")
    ap.add_argument("--constructs", type=int, default=3, help="backend constructions, one cold request each")
    ap.add_argument("--requests", type=int, default=20, help="warm requests, and cache-defeated requests")
    ap.add_argument("--cancels", type=int, default=10, help="cancelled requests")
    ap.add_argument("--cancel-after", type=int, default=5, help="on_delta returns True on this delta")
    ap.add_argument("--max-tokens", type=int, default=80, help="per reply (the engine default is 120)")
    ap.add_argument("--openai-url", default="", help="an OpenAI-compatible /v1 URL; none exists on this box")
    ap.add_argument("--openai-model", default="default", help="the served model's name")
    ap.add_argument("--max-load", type=float, default=1.0, help="wait until the 1-minute load average is below")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "llm.json")
    args = ap.parse_args()

    conditions = wait_for_idle(args.max_load, 600)
    print(f"1-minute load average {conditions['loadavg_1m_at_start']:.2f} (waited {conditions['waited_s']} s)")
    started, cpu0 = time.monotonic(), cpu_seconds()
    gguf = resolve_gguf("smollm2-135m")
    rows: list[dict[str, Any]] = []
    for threads in args.threads:
        rows.append(run_backend(f"llamacpp t{threads}", partial(LlamaCppBackend, gguf, threads=threads), args))
    skipped: dict[str, str] = {}
    if args.openai_url:
        try:
            rows.append(run_backend("openai", lambda: OpenAIBackend(args.openai_url, args.openai_model), args))
        except LlmError as exc:
            skipped["openai"] = f"{args.openai_url}: {exc}"
    else:
        skipped["openai"] = "no --openai-url given: there is no OpenAI-compatible server on this box"
    for name, why in skipped.items():
        print(f"{name}: skipped ({why})")

    print_table(rows)
    verdicts = budget(rows)
    example = rows[-1]["requests"]["warm"][0]
    print(f"\nexample reply ({rows[-1]['backend']}, {example['question']!r}): {example['reply']!r}")
    (box0, own0), (box1, own1) = cpu0, cpu_seconds()
    # CPU the rest of the box used meanwhile, in cores: what could have disturbed the figures.
    others = round(max(0.0, (box1 - box0) - (own1 - own0)) / (time.monotonic() - started), 3)
    print(f"other processes used {others:.2f} cores on average meanwhile")
    result = {
        "benchmark": "LLM latency: TTFT cold/warm/cache-defeated, decode speed, first speakable clause, cancel",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(**versions()),
        "conditions": {**conditions, "loadavg_1m_at_end": loadavg(), "other_processes_cores": others},
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "model": str(gguf.name), "system_prompt": SYSTEM_PROMPT, "questions": QUESTIONS},
        "duration_s": round(time.monotonic() - started, 1),
        "results": rows, "skipped": skipped, "budgets": verdicts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out} ({result['duration_s']} s)")


if __name__ == "__main__":
    main()
