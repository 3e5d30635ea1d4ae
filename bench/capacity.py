"""How many callers this box holds: `python -m engine soak` at rising caller counts, one after another.

For each `--callers` count it runs a steady soak of `--duration` seconds with the soak's default
script mix (questions, interruptions, keypresses, silent and vanishing callers) and admission off
(`engine.admit_max_response_ms = 0`, `engine.admit_max_cpu_pct = 0`, so no caller is turned away and
the raw load shows). Each row: voice-to-voice p50/p95/max (calls with no fault), calls by outcome,
bot-audio stalls, and each process's mean CPU. The capacity is the largest count whose p95 is at most
`--max-p95-ms` with no failed call.

`--vs-set SECTION.KEY=VALUE` runs every count a second time with that setting, first, so two settings
are compared in one run (`--set` applies to this side only); `--vs DIR` runs that side from the checkout
in DIR (another commit, e.g. a `git worktree`), with its own settings from `--vs-set`.

On a shared 2-core VM one soak's p95 rests on a few dozen answers and moves by a few hundred ms from run to run
(other tenants' steal time, which each row reports, comes and goes). `--repeat N` runs every count N times,
the sides alternating each time, and adds a pooled row per side and count: percentiles over every answer of
its N soaks, stalls summed, CPU averaged. The capacity is then decided on the pooled rows. `--stages` also
keeps each soak's latency trace and gives each row (and pooled row) every trace segment's p50/p95
(engine.trace_report), to see which stage a change moved.

    python bench/capacity.py --callers 2 3 4 6     # writes bench/results/soak_capacity.json
    python bench/capacity.py --callers 4 6 --vs-set tts.line_cache_mb=0
    python bench/capacity.py --callers 5 6 --vs ../base
    python bench/capacity.py --callers 6 --duration 90 --repeat 3 --vs-set llm.slots=4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_ticks, machine_info, setting_env, wait_for_idle  # noqa: E402
from engine.trace import read_events  # noqa: E402
from engine.trace_report import Reply, percentiles, replies, summarize  # noqa: E402


def stages(traced: list[Reply]) -> dict[str, dict[str, float]]:
    """Each trace segment's n, p50 and p95 (ms) over the answers in `traced`."""
    return {name: {k: round(v, 1) for k, v in seg.items() if k in ("n", "p50", "p95")}
            for name, seg in summarize(traced)["segments"].items() if seg["n"]}


def soak(callers: int, duration: float, config: Path, settings: list[str], root: Path = ROOT,
         traced: list[Reply] | None = None) -> dict[str, Any]:
    """One soak's row; with `traced`, its latency trace too (its replies appended there, its segments in the row)."""
    busy0, steal0 = cpu_ticks()
    with tempfile.TemporaryDirectory() as tmp:
        out, trace = Path(tmp) / "soak.json", Path(tmp) / "trace.jsonl"
        subprocess.run([sys.executable, "-m", "engine", "--config", str(config), "soak", "--callers", str(callers),
                        "--duration", str(duration), "--json", str(out),
                        *(["--trace", str(trace)] if traced is not None else [])], cwd=root, check=False,
                       stdout=subprocess.DEVNULL, env={**os.environ, **setting_env(settings)})
        report: dict[str, Any] = json.loads(out.read_text())
        these = replies(read_events(trace)) if traced is not None and trace.exists() else []
    busy1, steal1 = cpu_ticks()
    if traced is not None:
        traced += these
    v2v = report["latency_ms"]["voice_to_voice_no_fault"]
    calls = {k: v for k, v in report["calls"].items() if isinstance(v, int)}
    outbound = report["frames"]["no_fault"]["outbound"]
    return {"callers": callers, "settings": settings, "v2v_ms": v2v,
            "greeting_ms": report["latency_ms"]["greeting"], "calls": calls,
            "bot_audio_stalls": {"late_frames": outbound["late"], "stalled_ms": outbound["late_ms"],
                                 "into_the_audio_s": outbound.get("late_at_s")},
            "cpu_mean_pct_of_a_core": {name: r["cpu_pct_mean"] for name, r in report["resources"].items()
                                       if isinstance(r, dict) and "cpu_pct_mean" in r},
            "soak_sustained": report["sustained"],
            "steal_pct": round(100 * (steal1 - steal0) / max(1, busy1 - busy0 + steal1 - steal0), 1),
            "v2v_samples_ms": [v for r in report["call_records"] if not r.get("faults")
                               for v in r.get("voice_to_voice_ms", [])],
            **({"stages_ms": stages(these)} if traced is not None else {})}


def pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's soaks at one count as one: percentiles over all their answers, stalls and outcomes summed."""
    samples = [v for r in rows for v in r["v2v_samples_ms"]]
    calls: dict[str, int] = {}
    for r in rows:
        for k, v in r["calls"].items():
            calls[k] = calls.get(k, 0) + v
    cpu = {name: round(sum(r["cpu_mean_pct_of_a_core"].get(name, 0) for r in rows) / len(rows), 1)
           for name in rows[0]["cpu_mean_pct_of_a_core"]}
    stalls = {"late_frames": sum(r["bot_audio_stalls"]["late_frames"] for r in rows),
              "stalled_ms": round(sum(r["bot_audio_stalls"]["stalled_ms"] for r in rows), 1)}
    return {"side": rows[0]["side"], "callers": rows[0]["callers"], "settings": rows[0]["settings"],
            "pooled_runs": len(rows), "v2v_ms": percentiles(samples), "calls": calls, "bot_audio_stalls": stalls,
            "cpu_mean_pct_of_a_core": cpu, "steal_pct": [r["steal_pct"] for r in rows]}


def line(row: dict[str, Any], label: str) -> str:
    v = row["v2v_ms"]
    text = (f"{row['callers']:3d} callers ({label} {' '.join(row['settings'])}): v2v n {v['n']} p50 "
            f"{v.get('p50', 0):.0f} p95 {v.get('p95', 0):.0f} ms, failed {row['calls'].get('failed', 0)}, stalls "
            f"{row['bot_audio_stalls']['stalled_ms']} ms, steal {row['steal_pct']} %, "
            f"CPU {row['cpu_mean_pct_of_a_core']}")
    for name, seg in row.get("stages_ms", {}).items():
        text += f"\n      {name:<40} n {seg['n']:>4.0f}  p50 {seg['p50']:>7.1f}  p95 {seg['p95']:>7.1f}"
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callers", type=int, nargs="+", default=[2, 3, 4, 6])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--max-p95-ms", type=float, default=1500.0)
    ap.add_argument("--out", default="bench/results/soak_capacity.json")
    ap.add_argument("--no-wait", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--vs-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="also run every count with this setting (first), to compare in one run")
    ap.add_argument("--vs", metavar="DIR", help="run the vs side from the checkout in DIR")
    ap.add_argument("--stages", action="store_true", help="trace every soak; each row gets per-segment p50/p95")
    ap.add_argument("--repeat", type=int, default=1,
                    help="soaks per side and count, alternating; pooled rows decide (default 1)")
    args = ap.parse_args()
    sides = ([("vs", args.vs_set)] if args.vs_set or args.vs else []) + [("this", args.set)]
    roots = {"vs": Path(args.vs).resolve() if args.vs else ROOT, "this": ROOT}
    conditions = {} if args.no_wait else wait_for_idle(1.0, 600)
    rows = []
    traced: dict[tuple[str, int], list[Reply]] = {}
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write("[engine]\nadmit_max_response_ms = 0\nadmit_max_cpu_pct = 0\n")
        config = Path(f.name)
    try:
        for n in args.callers:
            for repeat in range(args.repeat):
                for label, settings in sides:
                    side_traced = traced.setdefault((label, n), []) if args.stages else None
                    row = {"side": label, "repeat": repeat,
                           **soak(n, args.duration, config, settings, roots[label], side_traced)}
                    rows.append(row)
                    print(line(row, label), flush=True)
    finally:
        config.unlink()
    pools = []
    if args.repeat > 1:
        print("\npooled:")
        for n in args.callers:
            for label, _ in sides:
                pools.append(pooled([r for r in rows if r["side"] == label and r["callers"] == n]))
                if args.stages:
                    pools[-1]["stages_ms"] = stages(traced[(label, n)])
                print(line(pools[-1], label))
    capacity = {label: max([r["callers"] for r in (pools or rows) if r["side"] == label
                            and r["v2v_ms"].get("p95", float("inf")) <= args.max_p95_ms
                            and not r["calls"].get("failed")], default=0) for label, _ in sides}
    result = {"benchmark": "soak_capacity", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
              "conditions": conditions, "duration_s": args.duration, "max_p95_ms": args.max_p95_ms,
              "settings": dict(sides), "roots": {label: str(roots[label]) for label, _ in sides},
              "capacity_callers": capacity["this"], "capacity_by_side": capacity,
              "repeat": args.repeat, "pooled": pools, "rows": rows}
    print(f"\nlargest caller count with v2v p95 <= {args.max_p95_ms:.0f} ms and no failed call: {capacity}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
