"""What calls cost while nobody speaks: N synthetic callers connected and silent, CPU of each system's processes.

    python bench/standing.py [--callers 3] [--seconds 40] [--repeat 3] [--set K=V] [--vs-set K=V] [--peer]
                             [--out bench/results/standing.json]

A call costs CPU for as long as it is up, whether anyone talks or not: Twilio sends 50 frames a second,
each is decoded, resampled and written to a ring, and the VAD hears every 32 ms of it. On a phone line
most of a call's time is someone listening, so this standing cost is a large part of calls per box.
Each round puts `--callers` callers on the line (started 1.3 s apart, as bench/peer.py does, so their
frames arrive out of step), waits for all of them, and measures the CPU of the system's processes over
`--seconds`, per process (engine: supervisor and children by name; peer: bot and LLM server). Sides
alternate round by round: the engine with `--set`, the engine with `--vs-set` (if given), the Pipecat
peer (with `--peer`; its venv is made as bench/peer.py makes it). Figures are medians over the rounds,
in % of one core; ratios are against the peer, or
without it against the `--vs-set` engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import machine_info, wait_for_idle  # noqa: E402
from bench.e2e import AUTH, PUBLIC, Engine  # noqa: E402
from bench.peer import CALLER_STAGGER_S, Peer, cpu_s  # noqa: E402
from tools.caller import StreamTarget, SyntheticCaller  # noqa: E402
from tools.engine_run import instance_pids  # noqa: E402

SETTLE_S = 2.0  # after the last caller connects, before measuring


def process_name(pid: int) -> str:
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "gone"
    return name.removeprefix("eng-")


async def standing_round(url: str, peer: bool, callers: int, seconds: float, pids: list[int]) -> dict[str, float]:
    """CPU % of a core of each process while `callers` silent callers are on the line."""
    connected = 0
    measured = asyncio.Event()

    async def caller(delay: float) -> None:
        nonlocal connected
        await asyncio.sleep(delay)
        async with SyntheticCaller(url, public_url=PUBLIC, auth_token=AUTH) as c:
            await c.connect(StreamTarget(url="wss://peer.local/ws") if peer else await c.dial(), continuous=True)
            connected += 1
            await measured.wait()
            await c.hangup()

    tasks = [asyncio.create_task(caller(i * CALLER_STAGGER_S)) for i in range(callers)]
    while connected < callers:
        if any(t.done() for t in tasks):  # a caller that failed to connect: say why
            await asyncio.gather(*tasks)
        await asyncio.sleep(0.05)
    await asyncio.sleep(SETTLE_S)
    before, t0 = {pid: cpu_s([pid]) for pid in pids}, time.monotonic()
    await asyncio.sleep(seconds)
    after, t1 = {pid: cpu_s([pid]) for pid in pids}, time.monotonic()
    measured.set()
    await asyncio.gather(*tasks)
    out: dict[str, float] = {}
    for pid in pids:
        name = process_name(pid)
        out[name] = out.get(name, 0.0) + 100 * (after[pid] - before[pid]) / (t1 - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--callers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=40.0, help="measured per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per side")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config setting for the engine (repeatable)")
    parser.add_argument("--vs-set", action="append", metavar="SECTION.KEY=VALUE",
                        help="also measure the engine with these settings instead (repeatable)")
    parser.add_argument("--peer", action="store_true", help="also measure the Pipecat peer")
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "standing.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="standing"))
    common = ["conversation.greeting=", "engine.admit_max_response_ms=0", "engine.admit_max_cpu_pct=0",
              "conversation.idle_reprompt_s=600"]
    sides: dict[str, tuple[Engine | Peer, list[str]]] = {}
    try:
        sides["engine"] = (Engine("this", ROOT, work, [*common, *args.set]), args.set)
        if args.vs_set is not None:
            sides["engine_vs"] = (Engine("vs", ROOT, work, [*common, *args.vs_set]), args.vs_set)
        if args.peer:
            sides["pipecat"] = (Peer("smart", []), [])
        for system, _ in sides.values():
            if isinstance(system, Engine):
                system.wait_healthy(180)
        conditions = {} if args.no_wait else wait_for_idle(1.0, 900)
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        for r in range(args.repeat):
            for name, (system, _) in sides.items():
                peer = isinstance(system, Peer)
                pids = system.pids() if isinstance(system, Peer) else instance_pids(system.instance)
                got = asyncio.run(standing_round(f"http://127.0.0.1:{system.port}", peer, args.callers,
                                                 args.seconds, pids))
                rounds[name].append(got)
                print(f"round {r + 1} {name}: {sum(got.values()):.1f} % of a core "
                      f"({', '.join(f'{k} {v:.1f}' for k, v in sorted(got.items()))})", flush=True)
    finally:
        for system, _ in sides.values():
            system.stop()
            if isinstance(system, Peer):
                system.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    figures: dict[str, Any] = {}
    for name, per_round in rounds.items():
        procs = sorted({p for g in per_round for p in g})
        figures[name] = {"settings": sides[name][1], "total_pct_of_a_core": round(
            statistics.median(sum(g.values()) for g in per_round), 2),
            "by_process": {p: round(statistics.median(g.get(p, 0.0) for g in per_round), 2) for p in procs},
            "rounds": [round(sum(g.values()), 2) for g in per_round]}
    base = "pipecat" if "pipecat" in figures else "engine_vs"
    ratios = {f"{n}/{base}": round(f["total_pct_of_a_core"] / figures[base]["total_pct_of_a_core"], 3)
              for n, f in figures.items() if n != base and base in figures}
    print(f"\n{args.callers} silent callers, {args.seconds:.0f} s a round, {args.repeat} rounds a side (medians)")
    for name, f in figures.items():
        print(f"{name:<10} {f['total_pct_of_a_core']:6.1f} % of a core  "
              + ", ".join(f"{p} {v:.1f}" for p, v in f["by_process"].items()))
    for k, v in ratios.items():
        print(f"ratio {k}: {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "standing cost of silent calls", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(), "conditions": conditions, "callers": args.callers, "seconds": args.seconds,
        "repeat": args.repeat, "sides": figures, "ratios": ratios}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
