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

    python bench/capacity.py --callers 2 3 4 6     # writes bench/results/soak_capacity.json
    python bench/capacity.py --callers 4 6 --vs-set tts.line_cache_mb=0
    python bench/capacity.py --callers 5 6 --vs ../base
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

from bench.common import machine_info, setting_env, wait_for_idle  # noqa: E402


def soak(callers: int, duration: float, config: Path, settings: list[str], root: Path = ROOT) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "soak.json"
        subprocess.run([sys.executable, "-m", "engine", "--config", str(config), "soak", "--callers", str(callers),
                        "--duration", str(duration), "--json", str(out)], cwd=root, check=False,
                       stdout=subprocess.DEVNULL, env={**os.environ, **setting_env(settings)})
        report: dict[str, Any] = json.loads(out.read_text())
    v2v = report["latency_ms"]["voice_to_voice_no_fault"]
    calls = {k: v for k, v in report["calls"].items() if isinstance(v, int)}
    outbound = report["frames"]["no_fault"]["outbound"]
    return {"callers": callers, "settings": settings, "v2v_ms": v2v,
            "greeting_ms": report["latency_ms"]["greeting"], "calls": calls,
            "bot_audio_stalls": {"late_frames": outbound["late"], "stalled_ms": outbound["late_ms"],
                                 "into_the_audio_s": outbound.get("late_at_s")},
            "cpu_mean_pct_of_a_core": {name: r["cpu_pct_mean"] for name, r in report["resources"].items()
                                       if isinstance(r, dict) and "cpu_pct_mean" in r},
            "soak_sustained": report["sustained"]}


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
    args = ap.parse_args()
    sides = ([("vs", args.vs_set)] if args.vs_set or args.vs else []) + [("this", args.set)]
    roots = {"vs": Path(args.vs).resolve() if args.vs else ROOT, "this": ROOT}
    conditions = {} if args.no_wait else wait_for_idle(1.0, 600)
    rows = []
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write("[engine]\nadmit_max_response_ms = 0\nadmit_max_cpu_pct = 0\n")
        config = Path(f.name)
    try:
        for n in args.callers:
            for label, settings in sides:
                row = {"side": label, **soak(n, args.duration, config, settings, roots[label])}
                rows.append(row)
                v = row["v2v_ms"]
                print(f"{n:3d} callers ({label} {' '.join(settings)}): v2v n {v['n']} p50 {v.get('p50', 0):.0f} "
                      f"p95 {v.get('p95', 0):.0f} ms, greeting p50 {row['greeting_ms'].get('p50', 0):.0f} ms, "
                      f"failed {row['calls'].get('failed', 0)}, stalls "
                      f"{row['bot_audio_stalls']['stalled_ms']} ms, CPU {row['cpu_mean_pct_of_a_core']}", flush=True)
    finally:
        config.unlink()
    capacity = {label: max([r["callers"] for r in rows if r["side"] == label
                            and r["v2v_ms"].get("p95", float("inf")) <= args.max_p95_ms
                            and not r["calls"].get("failed")], default=0) for label, _ in sides}
    result = {"benchmark": "soak_capacity", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
              "conditions": conditions, "duration_s": args.duration, "max_p95_ms": args.max_p95_ms,
              "settings": dict(sides), "roots": {label: str(roots[label]) for label, _ in sides},
              "capacity_callers": capacity["this"], "capacity_by_side": capacity,
              "rows": rows}
    print(f"\nlargest caller count with v2v p95 <= {args.max_p95_ms:.0f} ms and no failed call: {capacity}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
