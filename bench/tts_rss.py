"""TTS memory over many sentences: does the process's RSS settle, or grow in steps as onnxruntime's arena does?

A TTS process's RSS grew in steps from 166 to 428 MiB over 21 minutes of calls. This synthesises the same
`--sentences` varied sentences (3 to 60 words, a fixed seed) with the bundled Piper voice as the tts process
does (`StreamingPiper`, one thread), once with onnxruntime's CPU memory arena and memory pattern on (as
before engine/onnx_session.py) and once with them off (now), each in a fresh process, and records RSS every
`--every` sentences. Figures: RSS after loading, at the end, its peak, and the time it took (the box is
shared: a rough figure).

Run from the repository root (about 2 minutes):

    python bench/tts_rss.py                  # both modes; prints a table, writes bench/results/tts_rss.json
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import loadavg, machine_info  # noqa: E402

TEXT = ("your appointment is booked for Friday at half past nine with doctor Patel at the clinic on Main Street "
         "please bring your insurance card and arrive ten minutes early if you need to change it just call us "
         "back we are open from eight in the morning until six in the evening Monday to Saturday our address is "
         "four hundred and twelve Elm Avenue suite three the total comes to forty two dollars and fifty cents "
         "would you like me to send a confirmation by text message")
WORDS = TEXT.split()
PUNCTUATION = (".", "?", "!", ",")


def sentences(n: int, seed: int) -> list[str]:
    """`n` sentences of 3 to 60 words, most short, some long (a long one makes the biggest buffers)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = min(60, max(3, int(rng.expovariate(1 / 14))))
        start = rng.randrange(len(WORDS))
        text = " ".join(WORDS[(start + i) % len(WORDS)] for i in range(words))
        out.append(text[0].upper() + text[1:] + rng.choice(PUNCTUATION[:3]))
    return out


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(arena: bool, n: int, every: int, seed: int) -> dict[str, Any]:
    """One mode, in this process: RSS after loading and every `every` sentences."""
    from engine.piper_stream import StreamingPiper
    from engine.tts import bundled_piper_voice

    piper = StreamingPiper(bundled_piper_voice(), Path("~/.cache/voice-engine").expanduser(), arena=arena)
    loaded = rss_mib()
    samples: list[dict[str, float]] = []
    audio_s = 0.0
    t0 = time.monotonic()
    for i, text in enumerate(sentences(n, seed), start=1):
        audio_s += sum(len(chunk) for chunk in piper.synthesize(text)) / piper.sample_rate
        if i % every == 0:
            samples.append({"sentences": i, "rss_mib": round(rss_mib(), 1)})
            print(f"  arena {'on ' if arena else 'off'} {i:4d} sentences: RSS {samples[-1]['rss_mib']:6.1f} MiB",
                  flush=True)
    return {"arena": arena, "rss_loaded_mib": round(loaded, 1), "rss_end_mib": samples[-1]["rss_mib"],
            "rss_peak_mib": max(s["rss_mib"] for s in samples), "samples": samples,
            "audio_s": round(audio_s, 1), "wall_s": round(time.monotonic() - t0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--one", choices=("on", "off"), help="only this mode, in this process (prints JSON)")
    parser.add_argument("--out", default=str(ROOT / "bench/results/tts_rss.json"))
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one == "on", args.sentences, args.every, args.seed)))
        return
    runs = []
    load_at_start = loadavg()
    for mode in ("on", "off"):  # each in a fresh process: RSS is the process's
        proc = subprocess.run([sys.executable, __file__, "--one", mode, "--sentences", str(args.sentences),
                               "--every", str(args.every), "--seed", str(args.seed)],
                              stdout=subprocess.PIPE, text=True, check=True)
        lines = proc.stdout.splitlines()
        print("\n".join(lines[:-1]))
        runs.append(json.loads(lines[-1]))
    print(f"\n{'arena':>6} {'loaded':>8} {'end':>8} {'peak':>8} {'wall s':>7}  (RSS MiB, {args.sentences} sentences)")
    for run in runs:
        print(f"{'on' if run['arena'] else 'off':>6} {run['rss_loaded_mib']:8.1f} {run['rss_end_mib']:8.1f} "
              f"{run['rss_peak_mib']:8.1f} {run['wall_s']:7.1f}")
    result = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(onnxruntime=importlib.metadata.version("onnxruntime"),
                                      piper=importlib.metadata.version("piper-tts")),
              "loadavg_1m_at_start": load_at_start, "loadavg_1m_at_end": loadavg(),
              "sentences": args.sentences, "seed": args.seed, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
