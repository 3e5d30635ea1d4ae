"""What a re-encoded copy of the bundled LLM costs in quality: its next-token distribution against the shipped Q4_1's.

`llm.requantize` runs SmolLM2-135M from a copy of the shipped Q4_1 file re-encoded as Q8_0 (the default) or Q4_0
(engine/gguf_q4.py): faster on AVX2, each weight moved by up to one step of the new encoding. This measures what
that does to the model's output, the way llama.cpp's `perplexity --kl-divergence` does, on the kind of text the
engine makes:

- the shipped Q4_1 answers each prompt greedily (the engine's system prompt and chat template, a caller's
  question), `--tokens` tokens, keeping its top-`TOP` next-token log-probabilities at every position;
- the copy is fed the same prompt and the same tokens, teacher-forced, one position at a time, and gives
  its own top-`TOP` at each;
- at every position: whether both put the same token first (`same_top`), the KL divergence of Q4_0's
  distribution from Q4_1's over Q4_1's top-`TOP` (both renormalised there; a lower bound of the full KL), and
  the log-probability each gives Q4_1's greedy token (their mean difference is the log of a perplexity ratio
  on that text).

Both run on one thread with the prompt cache on, so each position reads one new token.

    python bench/q4_0.py --requantize q4_0    # writes bench/results/q4_0.json
    python bench/q4_0.py --requantize q8_0    # writes bench/results/q8_0.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import machine_info, wait_for_idle  # noqa: E402
from engine.config import LlmSection  # noqa: E402
from engine.llm import LlamaCppBackend, llama_model  # noqa: E402
from tools.soak_calls import QUESTIONS, STORY  # noqa: E402

TOP = 20
ASKS = (*QUESTIONS, STORY, "Can I book a table for four at seven tonight?",
        "My order hasn't arrived yet. What can I do?", "How do I reset my password?",
        "What are your opening hours on Sunday?")


def chat_text(question: str) -> str:
    """The engine's system prompt and a caller's question in SmolLM2's chat template (ChatML)."""
    system = LlmSection().system_prompt
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


def complete(llama: LlamaCppBackend, prompt: list[Any], n: int) -> list[dict[str, Any]]:
    """`n` greedy tokens after `prompt` (text and token ids), each with its top-TOP log-probabilities."""
    result = llama._server.handle_completions({"prompt": prompt, "n_predict": n, "temperature": 0.0,
                                               "n_probs": TOP, "cache_prompt": True, "id_slot": 0,
                                               "post_sampling_probs": False})
    try:
        probs: list[dict[str, Any]] = result["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        raise SystemExit(f"llama.cpp answered {str(result)[:300]}") from None
    return probs


def top(entry: dict[str, Any]) -> dict[int, float]:
    return {int(t["id"]): float(t["logprob"]) for t in entry["top_logprobs"]}


def kl_on(p: dict[int, float], q: dict[int, float]) -> float:
    """KL(P || Q) over P's top tokens, both renormalised there; a token Q does not list gets Q's smallest listed
    log-probability (an upper bound of what Q gives it)."""
    floor = min(q.values())
    p_mass = sum(math.exp(v) for v in p.values())
    q_mass = sum(math.exp(q.get(k, floor)) for k in p)
    return sum(math.exp(v) / p_mass * ((v - math.log(p_mass)) - (q.get(k, floor) - math.log(q_mass)))
               for k, v in p.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=40, help="tokens of each greedy answer compared")
    ap.add_argument("--requantize", choices=["q8_0", "q4_0"], default="q4_0", help="the copy to compare")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    paths = {"q4_1": llama_model(LlmSection(requantize="off")),
             "copy": llama_model(LlmSection(requantize=args.requantize))}
    out = args.out or ROOT / "bench" / "results" / f"{args.requantize}.json"
    conditions = wait_for_idle(1.0, 600)
    shipped = LlamaCppBackend(paths["q4_1"], threads=1, temperature=0.0, slots=1)
    copy = LlamaCppBackend(paths["copy"], threads=1, temperature=0.0, slots=1)
    positions: list[dict[str, Any]] = []
    answers = []
    try:
        for ask in ASKS:
            prompt = chat_text(ask)
            said = complete(shipped, [prompt], args.tokens)
            ids = [int(entry["id"]) for entry in said]
            copy_said = complete(copy, [prompt], args.tokens)
            answers.append({"ask": ask, "q4_1": "".join(e["token"] for e in said),
                            "copy": "".join(e["token"] for e in copy_said)})
            for i, entry in enumerate(said):
                (forced,) = complete(copy, [prompt, *ids[:i]], 1)
                p, q = top(entry), top(forced)
                token = ids[i]
                positions.append({"same_top": max(q, key=lambda k: q[k]) == token, "kl": kl_on(p, q),
                                  "logp_q4_1": p[token], "logp_copy": q.get(token, min(q.values()))})
    finally:
        shipped.close()
        copy.close()
    n = len(positions)
    same = sum(row["same_top"] for row in positions) / n
    mean_kl = statistics.fmean(row["kl"] for row in positions)
    d_logp = statistics.fmean(row["logp_copy"] - row["logp_q4_1"] for row in positions)
    same_answers = sum(a["q4_1"] == a["copy"] for a in answers)
    print(f"{args.requantize} copy, {n} positions over {len(ASKS)} answers: same top token {same:.1%}; "
          f"KL(Q4_1 || copy) over the top {TOP}: "
          f"mean {mean_kl:.4f}, p99 {sorted(r['kl'] for r in positions)[int(0.99 * (n - 1))]:.4f} nats; "
          f"Q4_1's tokens: mean log-prob {d_logp:+.4f} nats under the copy (perplexity x{math.exp(-d_logp):.3f}); "
          f"identical greedy answers {same_answers} of {len(answers)}")
    for a in answers:
        if a["q4_1"] != a["copy"]:
            print(f"  {a['ask']!r}\n    q4_1: {a['q4_1']!r}\n    copy: {a['copy']!r}")
    result = {"benchmark": f"{args.requantize} copy vs q4_1 as shipped",
              "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "machine": machine_info(), "conditions": conditions, "model": LlmSection().model,
              "compared": {name: str(path) for name, path in paths.items()}, "top": TOP,
              "positions": n, "same_top_token": round(same, 4), "kl_mean_nats": round(mean_kl, 5),
              "mean_logp_diff_nats": round(d_logp, 5), "perplexity_ratio_on_q4_1_text": round(math.exp(-d_logp), 4),
              "identical_greedy_answers": same_answers, "answers": answers}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
