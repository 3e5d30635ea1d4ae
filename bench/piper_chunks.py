"""Does each chunk of a streamed Piper sentence decode before the caller has heard the chunks before it?

    python bench/piper_chunks.py [--repeats 7] [--out bench/results/piper_chunks.json]

The TTS decodes a sentence's latent a chunk at a time (engine/piper_stream.py) and writes each chunk to
the call's ring as soon as it is decoded; the caller plays the audio in real time. Chunk k+1 is decoded
while chunks 0..k play, so if it takes longer than what is left of their audio, the caller hears a
stall. For each chunk size it times the decoder alone (p50 of `--repeats`); then, for each of the
sentences in REPLIES (the bot's kind), it decodes the sentence chunk by chunk, as the TTS does, with the
ramp on (16, 32, 64, 128... latent frames) and off (16, then 128), and takes the smallest slack: the
audio already out minus the time spent decoding, just before each chunk's audio is due. A negative slack
is a stall on an idle box; a box busy with other calls multiplies each decode, so the slack is also
given as a ratio (audio out / decode time of the chunk). Also the whole sentence's decode time per side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import machine_info, wait_for_idle  # noqa: E402
from engine.config import Config  # noqa: E402
from engine.piper_stream import StreamingPiper, chunks  # noqa: E402
from engine.tts import bundled_piper_voice  # noqa: E402

SIZES = (16, 32, 64, 128)
REPLIES = (  # sentences as the bot says them: a first clause, then sentences of 1.5 to 6 s
    "Sure, I can help with that.",
    "The capital of France is Paris, a city known for its art, food and history.",
    "There are seven days in a week.",
    "On a clear day the sky looks blue, because the air scatters blue light more than red light.",
    "To make a cup of tea, boil some water, pour it over a tea bag, and let it steep for three to five minutes.",
    "Cats sleep for around twelve to sixteen hours a day.",
    "Your appointment is booked for Tuesday the fourteenth at half past three in the afternoon.",
    "Is there anything else I can help you with today?",
)


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def chunk_ms(piper: StreamingPiper, latent: np.ndarray, repeats: int) -> dict[str, float]:
    """p50 decode time of one chunk of each size, from the middle of the latent."""
    return {str(n): float(np.median([timed(lambda n=n: piper.decode(latent, 16, 16 + n)) for _ in range(repeats)]))
            for n in SIZES if latent.shape[2] >= 16 + n + 8}


def sentence(piper: StreamingPiper, latent: np.ndarray, ramp: bool) -> dict[str, float]:
    """Decode one latent chunk by chunk: the worst slack before a chunk's audio is due, and the total decode."""
    frame_ms = piper.hop * 1000 / piper.sample_rate
    spent = out_ms = 0.0
    slack, ratio, first_audio = float("inf"), float("inf"), None
    for start, end in chunks(latent.shape[2], ramp=ramp):
        took = timed(lambda s=start, e=end: piper.decode(latent, s, e))
        spent += took
        if first_audio is None:
            first_audio = spent  # playback starts when the first chunk is out
        else:
            played = spent - first_audio  # how much of the audio out has played by now
            slack, ratio = min(slack, out_ms - played), min(ratio, (out_ms - (played - took)) / took)
        out_ms += (end - start) * frame_ms
    return {"audio_ms": out_ms, "decode_ms": spent, "first_audio_ms": first_audio or 0.0,
            "min_slack_ms": slack if slack != float("inf") else out_ms, "min_audio_over_decode": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="bench/results/piper_chunks.json")
    ap.add_argument("--no-wait", action="store_true")
    args = ap.parse_args()
    conditions = {} if args.no_wait else wait_for_idle(0.5, 300)
    piper = StreamingPiper(bundled_piper_voice(), Path(Config().tts.model_cache_dir).expanduser())  # the engine's split
    latents = [latent for text in REPLIES for latent, _ in piper.latents(text)]
    longest = max(latents, key=lambda x: x.shape[2])
    for _ in range(3):
        piper.decode(longest, 0, 64)  # warm
    sizes = chunk_ms(piper, longest, args.repeats)
    sides: dict[str, list[dict[str, float]]] = {"ramp": [], "flat": []}
    for _ in range(args.repeats // 2 + 1):
        for latent in latents:
            for side in ("ramp", "flat"):  # alternating, so both see the same box
                sides[side].append(sentence(piper, latent, ramp=side == "ramp"))
    summary: dict[str, Any] = {}
    for side, rows in sides.items():
        slack = np.array([r["min_slack_ms"] for r in rows])
        summary[side] = {
            "sentences": len(rows),
            "stalled_idle": int((slack < 0).sum()),
            "min_slack_ms_p50": float(np.median(slack)), "min_slack_ms_min": float(slack.min()),
            "audio_over_decode_min_p50": float(np.median([r["min_audio_over_decode"] for r in rows])),
            "decode_ms_per_audio_s_p50": float(np.median([r["decode_ms"] / r["audio_ms"] * 1000 for r in rows])),
            "first_audio_ms_p50": float(np.median([r["first_audio_ms"] for r in rows])),
        }
    ratio = summary["ramp"]["decode_ms_per_audio_s_p50"] / summary["flat"]["decode_ms_per_audio_s_p50"]
    print("chunk decode p50:", {k: f"{v:.1f} ms ({int(k) * piper.hop * 1000 / piper.sample_rate:.0f} ms of audio)"
                                for k, v in sizes.items()})
    for side, s in summary.items():
        print(f"{side}: {s['stalled_idle']} of {s['sentences']} sentences stall on an idle box; worst slack p50 "
              f"{s['min_slack_ms_p50']:.0f} ms (min {s['min_slack_ms_min']:.0f}); audio out / decode, worst chunk, "
              f"p50 {s['audio_over_decode_min_p50']:.2f}x; decode {s['decode_ms_per_audio_s_p50']:.0f} ms per "
              f"second of audio; first audio {s['first_audio_ms_p50']:.0f} ms")
    print(f"decode work, ramp / flat: {ratio:.2f}")
    result = {"benchmark": "piper_chunks", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(),
              "conditions": conditions, "repeats": args.repeats, "chunk_decode_ms_p50": sizes,
              "sentences": summary, "decode_work_ratio_ramp_over_flat": ratio}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
