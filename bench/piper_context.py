"""How much latent context Piper's chunked decoder needs (engine/piper_stream.py `CONTEXT`), and what it costs.

For each of bench/tts.py's sentences, with the voice's noise off (so every decode of a latent is the same),
the latent is decoded whole, then in the engine's chunks with each `--contexts` value. Reported per value:
the decoder's wall time for the sentence and for its first chunk (median over sentences and `--repeats`),
and the chunked audio's SNR against the whole decode (worst sentence). For scale, the SNR the phone line's
own mu-law codec leaves on the same audio.

    python bench/piper_context.py     # prints a table, writes bench/results/piper_context.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import engine.piper_stream as piper_stream  # noqa: E402
from bench.common import loadavg, machine_info, wait_for_idle  # noqa: E402
from bench.tts import SENTENCES  # noqa: E402
from engine.codec import mulaw_to_pcm16, pcm16_to_mulaw  # noqa: E402
from engine.config import Config  # noqa: E402
from engine.tts import bundled_piper_voice  # noqa: E402
from tests.speech_helpers import snr_db  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[16, 8, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench/results/piper_context.json"))
    args = ap.parse_args()
    idle = wait_for_idle(1.0, 600)
    voice = piper_stream.StreamingPiper(bundled_piper_voice(), Path(Config().tts.model_cache_dir).expanduser())
    voice._scales = np.array([0.0, voice._scales[1], 0.0], np.float32)  # noise off: one latent, one audio
    latents = [latent for text in SENTENCES for latent, _ in voice.latents(text)]
    wholes = [voice.decode(latent, 0, latent.shape[2]) for latent in latents]
    codec = min(snr_db(w, mulaw_to_pcm16(pcm16_to_mulaw(np.clip(w * 32767, -32768, 32767).astype(np.int16)))
                       .astype(np.float32) / 32767) for w in wholes)
    rows = []
    for context in args.contexts:
        piper_stream.CONTEXT = context
        total, first, snr = [], [], []
        for _ in range(args.repeats):
            for latent, whole in zip(latents, wholes, strict=True):
                pieces, t0 = [], time.perf_counter()
                for start, end in piper_stream.chunks(latent.shape[2]):
                    pieces.append(voice.decode(latent, start, end))
                    if len(pieces) == 1:
                        first.append((time.perf_counter() - t0) * 1000)
                total.append((time.perf_counter() - t0) * 1000)
                snr.append(snr_db(whole, np.concatenate(pieces)))
        rows.append({"context": context, "decode_ms_p50": round(statistics.median(total), 1),
                     "first_chunk_ms_p50": round(statistics.median(first), 1), "snr_db_worst": round(min(snr), 1)})
    base = rows[0]["decode_ms_p50"]
    print(f"{len(latents)} sentences; mu-law codec SNR on the same audio, worst: {codec:.1f} dB")
    print(f"{'context':>8}{'decode p50':>12}{'ratio':>7}{'first chunk':>13}{'SNR worst':>11}")
    for r in rows:
        print(f"{r['context']:>8}{r['decode_ms_p50']:>10.1f}ms{r['decode_ms_p50'] / base:>7.2f}"
              f"{r['first_chunk_ms_p50']:>11.1f}ms{r['snr_db_worst']:>9.1f}dB")
    out = {"benchmark": "piper_context", "machine": machine_info(),
           "conditions": {**idle, "loadavg_1m_at_end": loadavg()},
           "sentences": len(latents), "repeats": args.repeats, "mulaw_snr_db_worst": round(codec, 1), "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
