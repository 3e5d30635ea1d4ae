"""Calibrating the end-of-turn verdict on phone-path speech: Smart Turn v3.2 plus "the transcript ends a sentence".

    python bench/turn.py [--out bench/results/turn.json]

Each sentence (the WER set's caller utterances and the soak callers' questions) is spoken by Piper
(en_US-joe-medium) at 8 kHz, through the phone path (μ-law, back to 16 kHz), as the speech process
hears it. Each is judged as the engine judges a pause, on the turn so far plus the 150 ms of silence
that make a pause: once whole (a finished turn), and cut at 40 %, 55 % and 70 % of its length (a
caller pausing mid-sentence). For every threshold it prints how many finished turns would end at
once and how many cut ones would be wrongly ended, by the model alone and with the transcript rule
(tiny.en, the engine's transcriber, must end the text with . ? or !). The engine's threshold
(`speech.turn_complete_threshold`) is the lowest at which the rule ends at most 5 % of cut turns.
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
from bench.wer import UTTERANCES, synthesise  # noqa: E402
from engine.hearing import SENTENCE_END  # noqa: E402
from engine.stt import WhisperTranscriber, resolve_model  # noqa: E402
from engine.turn_model import SmartTurn  # noqa: E402
from tools.soak_calls import QUESTIONS  # noqa: E402

RATE = 16000
PAUSE_S = 0.15
CUTS = (0.4, 0.55, 0.7)
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MAX_FALSE_END = 0.05


def trim(audio: np.ndarray) -> np.ndarray:
    """The speech without the synthesiser's leading and trailing silence."""
    loud = np.flatnonzero(np.abs(audio) > 0.02)
    return audio[loud[0]:loud[-1] + 1] if len(loud) else audio


def cases(texts: list[str]) -> list[dict[str, Any]]:
    pause = np.zeros(int(PAUSE_S * RATE), np.float32)
    out = []
    for text in texts:
        speech = trim(synthesise("piper-phone", text))
        out.append({"text": text, "cut": 1.0, "audio": np.concatenate([speech, pause])})
        for cut in CUTS:
            out.append({"text": text, "cut": cut, "audio": np.concatenate([speech[:int(len(speech) * cut)], pause])})
    return out


def rates(rows: list[dict[str, Any]], threshold: float, with_text: bool) -> dict[str, float]:
    def ends(r: dict[str, Any]) -> bool:
        return bool(r["complete"] >= threshold and (not with_text or r["transcript"].strip().endswith(SENTENCE_END)))

    whole = [r for r in rows if r["cut"] == 1.0]
    cut = [r for r in rows if r["cut"] < 1.0]
    return {"finished_ended": sum(map(ends, whole)) / len(whole), "cut_ended": sum(map(ends, cut)) / len(cut)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "turn.json")
    parser.add_argument("--no-wait", action="store_true")
    args = parser.parse_args()
    texts = [*UTTERANCES, *QUESTIONS]
    print(f"synthesising {len(texts)} sentences with Piper, whole and cut at {CUTS} ...", flush=True)
    rows = cases(texts)
    idle = {} if args.no_wait else wait_for_idle(1.0, 1800)
    turn = SmartTurn()
    stt = WhisperTranscriber(resolve_model("tiny.en", Path("~/.cache/voice-engine").expanduser()))
    turn.complete([rows[0]["audio"]])  # warm-up
    ms = []
    for r in rows:
        t0 = time.perf_counter()
        r["complete"] = turn.complete([r["audio"]])[0]
        ms.append((time.perf_counter() - t0) * 1000)
        r["transcript"] = stt.transcribe(r["audio"])
    table = {f"{t:g}": {"model": rates(rows, t, False), "model_and_text": rates(rows, t, True)} for t in THRESHOLDS}
    print(f"\nSmart Turn: {np.median(ms):.0f} ms a turn (p50, one thread)\n")
    print(f"{'threshold':>9}  {'model: finished ended':>22} {'cut ended':>10}  {'+ text: finished ended':>23} "
          f"{'cut ended':>10}")
    for t, row in table.items():
        m, mt = row["model"], row["model_and_text"]
        print(f"{t:>9}  {m['finished_ended']:>22.0%} {m['cut_ended']:>10.0%}  {mt['finished_ended']:>23.0%} "
              f"{mt['cut_ended']:>10.0%}")
    chosen = next((float(t) for t, row in table.items() if row["model_and_text"]["cut_ended"] <= MAX_FALSE_END), None)
    print(f"\nlowest threshold that ends at most {MAX_FALSE_END:.0%} of cut turns (with the text rule): {chosen}")
    by_cut = {f"{c:g}": float(np.median([r["complete"] for r in rows if r["cut"] == c])) for c in (*CUTS, 1.0)}
    print("median score by cut: " + ", ".join(f"{c}: {v:.2f}" for c, v in by_cut.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "end-of-turn verdict on phone-path Piper speech", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(), "conditions": idle, "smart_turn_ms_p50": float(np.median(ms)),
        "pause_s": PAUSE_S, "cuts": CUTS, "thresholds": table, "chosen_threshold": chosen,
        "max_false_end": MAX_FALSE_END, "median_score_by_cut": by_cut,
        "cases": [{k: v for k, v in r.items() if k != "audio"} for r in rows],
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
