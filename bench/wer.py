"""Word error rate and latency of the speech-to-text tiers on the things callers say.

The test set is a fixed list of short caller utterances heavy in what a phone agent must get right:
account and phone numbers, names, dates, times, addresses and amounts. The reference text is written
in words, the way a person reads it aloud, and two synthetic voices speak it: espeak-ng (formant
synthesis, robotic) and Piper en_US-joe-medium (neural, much closer to a person), in these conditions:

  16k    espeak-ng straight to 16 kHz (`tools.caller.speech_from_text(text, rate=16000)`)
  phone  espeak-ng at 8 kHz through the phone path (`tests.speech_helpers.phone_path`: μ-law,
         decoded, resampled to 16 kHz in 20 ms chunks), what the speech process hears on a call
  piper-16k, piper-phone   the same with Piper's voice (22.05 kHz, resampled to 16 kHz / 8 kHz)
  8k     diagnostic, tiny.en only (`--bandwidth-check`): espeak-ng at 8 kHz resampled straight to
         16 kHz by soxr, no μ-law and no engine resampler, to tell what the 4 kHz bandwidth of a
         phone line costs apart from what the codec and the engine's resampler cost

Each tier is `engine.stt.WhisperTranscriber` with the engine's defaults (int8, one thread, the beam of
speech.stt_beam_size): `tiny.en` (the default) and `base`; tiny.en also runs with two threads, for latency.
Each runs with each encoder window of `--windows` (default: 8 s, the engine's: the utterance plus 4 s
of silence, 8 s at least; and 30 s, every utterance padded as faster-whisper does) and each decoder beam
of `--beams`, so they are compared on the same audio in one run; a tier is named `tiny.en@8s/b2`. With
`--pads` (the silence after the utterance, speech.stt_pad_s) other than the engine's, it is `tiny.en@8s+2s/b2`.

Before scoring, both sides go through the same normaliser: lowercase, punctuation dropped, and every
number, whether written in digits ("4", "14th", "3:30", "$49.95") or in words ("four", "fourteenth",
"three thirty", "forty nine dollars and ninety five cents"), becomes one token per digit (ordinals
add an "ord" token), so "1987" and "nineteen eighty seven" agree, and a wrong digit in an account
number counts as one error. WER = (substitutions + deletions + insertions) / reference tokens, by a
plain edit distance over tokens; the corpus WER sums edits and reference tokens over the whole set.

Latency is the wall time of one `transcribe` call per utterance (after one warm-up call), reported
as median and p90, per audio-length bucket, and as a least-squares line ms = a + b * seconds. As the
test set is mostly 2-5 s long, a sweep also times clips cut to 1-16 s from the phone-path audio.

Before measuring it waits until no `bench/transport.py` is running and the 1-minute load average is
below 1.0 (this is a small box shared with other benchmarks), and records the load average.

Run from the repository root (about 3 minutes with the defaults):

    python bench/wer.py                      # prints tables, writes bench/results/wer.json
    python bench/wer.py --tiers tiny.en --conditions phone
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# As bench/ipc.py does: `python bench/wer.py` puts bench/ first on sys.path; import from the repository root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import soxr  # noqa: E402

from bench.common import guarded, loadavg, machine_info, wait_for_idle  # noqa: E402
from engine.config import SpeechSection  # noqa: E402
from engine.stt import WhisperTranscriber, resolve_model  # noqa: E402
from tests.speech_helpers import phone_path, spoken  # noqa: E402
from tools.caller import piper_speech, speech_from_text  # noqa: E402

RATE = 16_000
TARGET_WER = 0.10  # the issue's target: tiny.en on the phone path
TARGET = ("tiny.en", 1, "phone")
CONDITIONS = ("16k", "phone", "piper-16k", "piper-phone")
SWEEP_S = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
Float32 = npt.NDArray[np.float32]

# What callers say, written as a person reads it aloud. Fixed: the set is not tuned to the models.
UTTERANCES = (
    "My account number is four seven two nine one.",
    "I'd like to book an appointment for Tuesday the fourteenth at half past three.",
    "My name is Maria Gonzalez.",
    "You can call me back on five five five, eight six seven, five three zero nine.",
    "I live at twenty two Baker Street, apartment four.",
    "The bill came to forty nine dollars and ninety five cents.",
    "My date of birth is March third, nineteen eighty seven.",
    "Could we move it to Friday at ten thirty in the morning?",
    "The order number is eight three one five six two.",
    "It's John Smith, that's S M I T H.",
    "I need two tickets for the twenty first of June.",
    "My zip code is nine zero two one zero.",
    "I'd like to pay one hundred and fifty dollars today.",
    "Please send it to one twenty five Oak Avenue, Springfield.",
    "My flight lands at seven fifteen on Sunday evening.",
    "I'm calling for David O'Brien about the invoice.",
    "Can I get a table for six people on the second of August?",
    "My card ends in zero four eight two.",
    "The meeting is on Wednesday the thirtieth at nine o'clock.",
    "I was charged twelve dollars twice last month.",
    "I've been a customer for about fifteen years.",
    "The parcel weighs two point five kilograms.",
    "Put me down for Thursday, November the eleventh, at quarter to five.",
    "My employee number is three three nine one zero seven.",
    "I'd like to transfer two thousand five hundred dollars to savings.",
    "My wife's name is Priya Patel and mine is Thomas Nguyen.",
    "We're at four hundred and twelve Maple Drive, unit nine.",
    "The interest rate went up to six point two percent.",
    "Yes, the best time to call is between two and four in the afternoon.",
    "My sister Jennifer Kowalski made the booking on the fifth of May.",
    "Can you confirm the total of three hundred and twenty dollars?",
    "Hi, this is Robert calling from Dallas about my insurance claim.",
)


# --- normalising -------------------------------------------------------------------------------

UNITS = {w: i for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])}
TEENS = {w: 10 + i for i, w in enumerate(["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                                          "seventeen", "eighteen", "nineteen"])}
TENS = {w: 10 * (i + 2) for i, w in enumerate(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty",
                                               "ninety"])}
SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
ORDINALS = {
    "first": "one", "second": "two", "third": "three", "fourth": "four", "fifth": "five", "sixth": "six",
    "seventh": "seven", "eighth": "eight", "ninth": "nine", "tenth": "ten", "eleventh": "eleven",
    "twelfth": "twelve", "thirteenth": "thirteen", "fourteenth": "fourteen", "fifteenth": "fifteen",
    "sixteenth": "sixteen", "seventeenth": "seventeen", "eighteenth": "eighteen", "nineteenth": "nineteen",
    "twentieth": "twenty", "thirtieth": "thirty", "fortieth": "forty", "fiftieth": "fifty",
    "sixtieth": "sixty", "seventieth": "seventy", "eightieth": "eighty", "ninetieth": "ninety",
    "hundredth": "hundred", "thousandth": "thousand",
}
NUMBER_WORDS = set(UNITS) | set(TEENS) | set(TENS) | set(SCALES)
SPELLING = {"ok": "okay", "mr": "mister", "mrs": "missus", "dr": "doctor", "kg": "kilograms", "lbs": "pounds"}


def _digits_to_words(text: str) -> str:
    """Rewrite what is written in digits as the tokens the word parser will produce for it."""
    text = re.sub(r"(\d{1,2}):00\b", r"\1", text)  # "9:00" is said "nine" (o'clock is dropped below)
    text = re.sub(r"(\d{1,2}):(\d{2})\b", r"\1 \2", text)  # "3:30" -> "3 30", as in "three thirty"
    text = re.sub(r"(?<=\bat )(\d{1,2})\.(\d{2})\b", r"\1 \2", text)  # "at 10.30" is a time, not a decimal
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # thousands separators
    # "400 and 12", "300 and $20": "four hundred and twelve" written as heard, one number when read out.
    text = re.sub(r"\b(\d*[1-9]00) and (\$?)(\d{1,2})\b", lambda m: f"{m[2]}{int(m[1]) + int(m[3])}", text)
    text = re.sub(r"\$(\d+)\.(\d{2})\b", r"\1 dollars and \2 cents", text)
    text = re.sub(r"\$(\d+)", r"\1 dollars", text)
    text = re.sub(r"(\d)%", r"\1 percent", text)
    text = re.sub(r"(\d)\.(\d)", r"\1 point \2", text)
    text = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1 ord", text)
    return re.sub(r"\d+", lambda m: " ".join(m.group()), text)  # one token per digit


def _number_value(words: list[str]) -> str:
    """Digits of a run of number words, chunked where a new number must start.

    "nineteen eighty seven" -> "1987", "one twenty five" -> "125", "four seven two" -> "472",
    "two thousand five hundred" -> "2500", "one hundred and fifty" -> "150".
    """
    chunks: list[int] = []
    total = current = 0
    last = ""  # kind of the previous word: unit, teen, tens, scale
    started = False

    def flush() -> None:
        nonlocal total, current, started
        if started:
            chunks.append(total + current)
        total = current = 0
        started = False

    for w in words:
        if w in SCALES:
            scale = SCALES[w]
            if not started:
                current, started = 1, True  # "a hundred", "hundred" alone
            if scale == 100:
                current *= 100
            else:
                total, current = (total + current) * scale, 0
            last = "scale"
            continue
        value = UNITS.get(w, TEENS.get(w, TENS.get(w, 0)))
        kind = "unit" if w in UNITS else "teen" if w in TEENS else "tens"
        fits = last in ("", "scale") or (last == "tens" and kind == "unit" and current % 10 == 0 and value > 0)
        if started and not fits:
            flush()
        current += value
        started = True
        last = kind
    flush()
    return "".join(str(c) for c in chunks)


def normalise(text: str) -> list[str]:
    """The scoring tokens of `text`: lowercase words, numbers as one token per digit."""
    text = text.lower().replace("&", " and ").replace("o'clock", " ").replace("o’clock", " ")
    text = _digits_to_words(text)
    text = re.sub(r"['’]", "", text)  # i'd -> id, o'brien -> obrien, on both sides alike
    tokens = [SPELLING.get(t, t) for t in re.findall(r"[a-z0-9]+", text)]
    out: list[str] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.isdigit():
            out.append(t)
            i += 1
            continue
        run: list[str] = []
        ordinal = False
        j = i
        while j < len(tokens):
            w = tokens[j]
            nxt = tokens[j + 1] if j + 1 < len(tokens) else ""
            near_number = (run and run[-1] in UNITS) or nxt in NUMBER_WORDS or nxt.isdigit()
            if w in NUMBER_WORDS:
                run.append(w)
            elif w in ORDINALS:
                run.append(ORDINALS[w])
                ordinal = True
                j += 1
                break
            elif w == "oh" and near_number:  # "nine oh two" on a phone line is a zero
                run.append("zero")
            elif w == "a" and nxt in SCALES and not run:  # "a hundred"
                pass
            elif w == "and" and run and run[-1] in SCALES and (nxt in NUMBER_WORDS or nxt in ORDINALS):
                pass  # "one hundred and fifty"
            else:
                break
            j += 1
        if run:
            out += list(_number_value(run)) + (["ord"] if ordinal else [])
            i = j
        else:
            out.append(t)
            i += 1
    return out


# --- scoring -----------------------------------------------------------------------------------

@dataclass
class Alignment:
    """Edits turning the reference into the hypothesis."""

    subs: list[tuple[str, str]]
    dels: list[str]
    ins: list[str]

    @property
    def edits(self) -> int:
        return len(self.subs) + len(self.dels) + len(self.ins)


def align(ref: list[str], hyp: list[str]) -> Alignment:
    """Levenshtein over tokens, with the edits recovered by walking back through the table."""
    d = np.zeros((len(ref) + 1, len(hyp) + 1), np.int32)
    d[:, 0] = np.arange(len(ref) + 1)
    d[0, :] = np.arange(len(hyp) + 1)
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            d[i, j] = min(d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]), d[i - 1, j] + 1, d[i, j - 1] + 1)
    subs: list[tuple[str, str]] = []
    dels: list[str] = []
    ins: list[str] = []
    i, j = len(ref), len(hyp)
    while i or j:
        if i and j and d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            if ref[i - 1] != hyp[j - 1]:
                subs.append((ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif i and d[i, j] == d[i - 1, j] + 1:
            dels.append(ref[i - 1])
            i -= 1
        else:
            ins.append(hyp[j - 1])
            j -= 1
    return Alignment(subs[::-1], dels[::-1], ins[::-1])


# --- measurement hygiene -----------------------------------------------------------------------

# --- the run -----------------------------------------------------------------------------------

def synthesise(condition: str, text: str) -> Float32:
    if condition == "piper-16k":
        pcm = piper_speech(text, rate=RATE)
    elif condition == "piper-phone":
        pcm = phone_path(piper_speech(text, rate=8000), rate=RATE)
    elif condition == "16k":
        pcm = speech_from_text(text, rate=RATE)
    elif condition == "8k":
        pcm = np.asarray(soxr.resample(spoken(text), 8000, RATE), dtype=np.int16)
    else:
        pcm = phone_path(spoken(text), rate=RATE)
    audio: Float32 = pcm.astype(np.float32) * np.float32(1 / 32768)
    return audio


def latency_summary(audio_s: list[float], ms: list[float]) -> dict[str, Any]:
    lat, secs = np.array(ms), np.array(audio_s)
    buckets: dict[str, dict[str, float | int | None]] = {}
    for name, lo, hi in (("<2s", 0.0, 2.0), ("2-4s", 2.0, 4.0), (">4s", 4.0, np.inf)):
        sel = lat[(secs >= lo) & (secs < hi)]
        buckets[name] = {"n": int(sel.size), "p50_ms": float(np.median(sel)) if sel.size else None,
                         "max_ms": float(sel.max()) if sel.size else None}
    b, a = np.polyfit(secs, lat, 1)
    resid = lat - (a + b * secs)
    return {"p50_ms": float(np.median(lat)), "p90_ms": float(np.percentile(lat, 90)), "max_ms": float(lat.max()),
            "mean_rtf": float(np.mean(lat / 1000 / secs)), "buckets": buckets,
            "fit": {"a_ms": float(a), "b_ms_per_s": float(b), "rms_resid_ms": float(np.sqrt(np.mean(resid ** 2)))}}


def run_case(stt: WhisperTranscriber, tier: str, threads: int, condition: str,
             audio: list[Float32]) -> dict[str, Any]:
    """One tier (with its window) on one condition's utterances: WER and latency."""
    stt.transcribe(audio[0])  # warm-up: first-call allocations are not a caller's latency
    rows: list[dict[str, Any]] = []
    edits = ref_tokens = 0
    n_subs = n_dels = n_ins = 0
    for text, clip in zip(UTTERANCES, audio, strict=True):
        t0 = time.perf_counter()
        hyp = stt.transcribe(clip)
        ms = (time.perf_counter() - t0) * 1000
        ref_n, hyp_n = normalise(text), normalise(hyp)
        al = align(ref_n, hyp_n)
        edits += al.edits
        ref_tokens += len(ref_n)
        n_subs, n_dels, n_ins = n_subs + len(al.subs), n_dels + len(al.dels), n_ins + len(al.ins)
        rows.append({"reference": text, "hypothesis": hyp, "ref_norm": " ".join(ref_n), "hyp_norm": " ".join(hyp_n),
                     "ref_tokens": len(ref_n), "edits": al.edits, "wer": al.edits / len(ref_n),
                     "subs": al.subs, "dels": al.dels, "ins": al.ins,
                     "audio_s": round(len(clip) / RATE, 3), "latency_ms": round(ms, 1)})
    return {"tier": tier, "threads": threads, "condition": condition, "wer": edits / ref_tokens,
            "edits": edits, "ref_tokens": ref_tokens, "subs": n_subs, "dels": n_dels, "ins": n_ins,
            "utterances_with_errors": sum(r["edits"] > 0 for r in rows),
            "latency": latency_summary([r["audio_s"] for r in rows], [r["latency_ms"] for r in rows]),
            "utterances": rows}


def latency_sweep(stt: WhisperTranscriber, tier: str, threads: int, pool: Float32,
                  repeats: int) -> dict[str, Any]:
    """Latency against clip length over a wider range than the test set: cuts of the phone-path audio."""
    stt.transcribe(pool[:RATE])
    points: list[dict[str, Any]] = []
    for secs in SWEEP_S:
        n = int(secs * RATE)
        ms: list[float] = []
        for k in range(repeats):
            start = (k * len(pool) // repeats) % max(1, len(pool) - n)
            t0 = time.perf_counter()
            stt.transcribe(pool[start:start + n])
            ms.append((time.perf_counter() - t0) * 1000)
        points.append({"audio_s": secs, "p50_ms": float(np.median(ms)), "all_ms": [round(x, 1) for x in ms]})
    secs_arr = np.array([p["audio_s"] for p in points])
    b, a = np.polyfit(secs_arr, np.array([p["p50_ms"] for p in points]), 1)
    return {"tier": tier, "threads": threads, "points": points, "fit": {"a_ms": float(a), "b_ms_per_s": float(b)}}


def error_analysis(case: dict[str, Any]) -> dict[str, Any]:
    """Which utterances and words the errors come from."""
    rows = case["utterances"]
    subs = Counter(f"{a}->{b}" for r in rows for a, b in r["subs"])
    dels = Counter(w for r in rows for w in r["dels"])
    ins = Counter(w for r in rows for w in r["ins"])
    worst = sorted(rows, key=lambda r: -r["edits"])
    top3 = sum(r["edits"] for r in worst[:3])
    digit_ref = sum(1 for r in rows for t in r["ref_norm"].split() if t.isdigit())
    digit_err = (sum(1 for r in rows for a, _ in r["subs"] if a.isdigit())
                 + sum(1 for r in rows for w in r["dels"] if w.isdigit()))
    return {"top_substitutions": subs.most_common(12), "top_deletions": dels.most_common(8),
            "top_insertions": ins.most_common(8),
            "worst_utterances": [{"reference": r["reference"], "hypothesis": r["hypothesis"], "edits": r["edits"]}
                                 for r in worst[:6] if r["edits"]],
            "edits_in_worst_3": top3, "edits_total": case["edits"],
            "digit_tokens_ref": digit_ref, "digit_tokens_wrong_or_missing": digit_err}


def print_tables(cases: list[dict[str, Any]]) -> None:
    head = (f"{'tier':<13}{'thr':>4} {'condition':<7}{'WER':>8}{'edits':>7}{'ref':>6}{'S/D/I':>10}{'utt err':>9}"
            f"{'p50 ms':>9}{'p90 ms':>9}{'<2s':>7}{'2-4s':>7}{'>4s':>7}{'others':>7}   fit ms = a + b*s")
    print("\nWER (normalised tokens) and transcription latency per utterance; bucket columns = p50 ms;\n"
          "others = CPU the rest of the box used during the case, in cores (a disturbance check)")
    print(head)
    print("-" * len(head))
    for c in cases:
        lat = c["latency"]
        bk = "".join(f"{v['p50_ms']:>7.0f}" if v["p50_ms"] is not None else f"{'-':>7}"
                     for v in lat["buckets"].values())
        print(f"{c['tier']:<13}{c['threads']:>4} {c['condition']:<7}{c['wer']:>8.1%}{c['edits']:>7}{c['ref_tokens']:>6}"
              f"{c['subs']:>4}/{c['dels']}/{c['ins']:<3}{c['utterances_with_errors']:>7}/{len(c['utterances'])}"
              f"{lat['p50_ms']:>9.0f}{lat['p90_ms']:>9.0f}{bk}{c['case_conditions']['other_processes_cores']:>7.2f}"
              f"   {lat['fit']['a_ms']:.0f} + "
              f"{lat['fit']['b_ms_per_s']:.0f}*s")


def print_sweep(sweeps: list[dict[str, Any]]) -> None:
    print("\nlatency sweep (phone-path audio cut to length), p50 ms per transcribe")
    head = f"{'tier':<13}{'thr':>4}" + "".join(f"{f'{s:g} s':>8}" for s in SWEEP_S) + "   fit ms = a + b*s"
    print(head)
    print("-" * len(head))
    for sw in sweeps:
        print(f"{sw['tier']:<13}{sw['threads']:>4}" + "".join(f"{p['p50_ms']:>8.0f}" for p in sw["points"])
              + f"   {sw['fit']['a_ms']:.0f} + {sw['fit']['b_ms_per_s']:.0f}*s")


def print_utterances(cases: list[dict[str, Any]]) -> None:
    """Per-utterance WER side by side, one column per case."""
    names = [f"{c['tier']}/{c['threads']}/{c['condition']}" for c in cases]
    print("\nper-utterance WER (audio seconds from the phone condition)")
    print(f"{'#':>3} {'secs':>5}  " + "".join(f"{n:>24}" for n in names) + "  reference")
    phone = next((c for c in cases if c["condition"] == "phone"), cases[0])
    for i, text in enumerate(UTTERANCES):
        cols = "".join(f"{c['utterances'][i]['wer']:>24.0%}" for c in cases)
        print(f"{i:>3} {phone['utterances'][i]['audio_s']:>5.1f}  {cols}  {text}")


def versions() -> dict[str, str]:
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {"numpy": np.__version__, "faster_whisper": importlib.metadata.version("faster-whisper"),
            "ctranslate2": importlib.metadata.version("ctranslate2"), "espeak_ng": espeak}


def tier_name(model: str, window: float, pad: float, beam: int) -> str:
    padded = "" if pad == SpeechSection().stt_pad_s else f"+{pad:g}s"
    return f"{model}@{window:g}s{padded}/b{beam}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiers", nargs="+", default=["tiny.en", "base"], help="models, as speech.stt_model names them")
    ap.add_argument("--windows", nargs="+", type=float, default=[8.0, 30.0],
                    help="encoder windows (speech.stt_min_window_s) to compare; the first is the target's")
    ap.add_argument("--pads", nargs="+", type=float, default=[SpeechSection().stt_pad_s],
                    help="silence after the utterance in the window (speech.stt_pad_s); the first is the target's")
    ap.add_argument("--beams", nargs="+", type=int, default=[SpeechSection().stt_beam_size],
                    help="decoder beams to compare (speech.stt_beam_size; 1 = greedy); the first is the target's")
    ap.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    ap.add_argument("--extra-threads", type=int, default=2,
                    help="also run tiny.en on the phone path with this many threads (0 = skip)")
    ap.add_argument("--bandwidth-check", action=argparse.BooleanOptionalAction, default=True,
                    help="also run tiny.en on espeak at 8 kHz with no codec (bandwidth alone)")
    ap.add_argument("--sweep-repeats", type=int, default=3, help="clips per length in the latency sweep (0 = skip)")
    ap.add_argument("--cache-dir", type=Path, default=Path("~/.cache/voice-engine").expanduser(),
                    help="where the base tier's halves are joined")
    ap.add_argument("--max-load", type=float, default=1.0, help="wait until the 1-minute load is below this")
    ap.add_argument("--max-wait", type=float, default=1800.0, help="give up waiting for an idle box after this, s")
    ap.add_argument("--no-wait", action="store_true", help="measure at once, busy box or not (smoke tests only)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "wer.json")
    args = ap.parse_args()

    print(f"synthesising {len(UTTERANCES)} utterances x {len(args.conditions)} conditions (espeak-ng, Piper) ...",
          flush=True)
    plan: list[tuple[str, int, str]] = []  # each model's cases together: it is loaded once
    tiers: dict[str, tuple[str, float, float, int]] = {}  # name: model, window, pad, beam
    for model in args.tiers:
        for window, pad, beam in [(w, p, b) for w in args.windows for p in args.pads for b in args.beams]:
            tier = tier_name(model, window, pad, beam)
            tiers[tier] = (model, window, pad, beam)
            plan += [(tier, 1, cond) for cond in args.conditions]
            if model == "tiny.en" and args.bandwidth_check:
                plan.append((tier, 1, "8k"))
            if model == "tiny.en" and args.extra_threads and "phone" in args.conditions:
                plan.append((tier, args.extra_threads, "phone"))
    audio = {cond: [synthesise(cond, t) for t in UTTERANCES] for cond in {c for _, _, c in plan} | {"phone"}}
    sweep_pool = np.concatenate(audio["phone"])
    models = {model: resolve_model(model, args.cache_dir) for model in args.tiers}  # joins base once, before timing

    idle = ({"waited_s": 0.0, "loadavg_1m_at_start": loadavg(), "did_not_wait": True} if args.no_wait
            else wait_for_idle(args.max_load, args.max_wait))
    print(f"load average at start {idle['loadavg_1m_at_start']:.2f} (waited {idle['waited_s']} s)", flush=True)
    started = time.monotonic()
    cases: list[dict[str, Any]] = []
    sweeps: list[dict[str, Any]] = []
    loaded: tuple[str, int] | None = None
    stt: WhisperTranscriber | None = None
    for tier, threads, cond in plan:
        if loaded != (tier, threads) or stt is None:
            model, window, pad, beam = tiers[tier]
            stt = WhisperTranscriber(models[model], threads=threads, min_window_s=window, pad_s=pad, beam_size=beam)
            loaded = (tier, threads)
        print(f"{tier} ({threads} thread{'s' * (threads > 1)}), {cond}: {len(UTTERANCES)} utterances ...",
              flush=True)
        cases.append(guarded(partial(run_case, stt, tier, threads, cond, audio[cond]), args.no_wait))
        last_of_model = all((t, n) != (tier, threads) for t, n, _ in plan[len(cases):])
        if args.sweep_repeats and last_of_model:
            print(f"{tier} ({threads} thread{'s' * (threads > 1)}): latency sweep ...", flush=True)
            sweeps.append(guarded(partial(latency_sweep, stt, tier, threads, sweep_pool, args.sweep_repeats),
                                  args.no_wait))

    print_tables(cases)
    if sweeps:
        print_sweep(sweeps)
    print_utterances(cases)
    analysis = {f"{c['tier']}/{c['threads']}/{c['condition']}": error_analysis(c) for c in cases}
    target_tier = tier_name(TARGET[0], args.windows[0], args.pads[0], args.beams[0])
    target_case = next((c for c in cases if (c["tier"], c["threads"], c["condition"]) == (target_tier, *TARGET[1:])),
                       None)
    target: dict[str, Any] = {"tier": TARGET[0], "condition": TARGET[2], "wer_max": TARGET_WER}
    piper_key = (target_tier, 1, "piper-phone")
    piper_case = next((c for c in cases if (c["tier"], c["threads"], c["condition"]) == piper_key), None)
    if piper_case is not None:
        target["piper_phone_wer"] = piper_case["wer"]
        target["piper_phone_met"] = piper_case["wer"] <= TARGET_WER
        print(f"\ntiny.en phone-path WER with Piper's voice: {piper_case['wer']:.1%}  "
              f"{'MET' if target['piper_phone_met'] else 'MISSED'} (target {TARGET_WER:.0%})")
    if target_case is not None:
        target.update(wer=target_case["wer"], met=target_case["wer"] <= TARGET_WER)
        print(f"\ntarget: tiny.en phone-path WER <= {TARGET_WER:.0%}: {target_case['wer']:.1%}  "
              f"{'MET' if target['met'] else 'MISSED'}")
        a = analysis["/".join(str(x) for x in (target_tier, *TARGET[1:]))]
        print(f"  {a['edits_in_worst_3']} of {a['edits_total']} edits are in the 3 worst utterances; digits wrong "
              f"or missing: {a['digit_tokens_wrong_or_missing']} of {a['digit_tokens_ref']}")
        print("  substitutions: " + ", ".join(f"{k} x{v}" for k, v in a["top_substitutions"]))
        print("  deletions:     " + ", ".join(f"{k} x{v}" for k, v in a["top_deletions"]))
        print("  insertions:    " + ", ".join(f"{k} x{v}" for k, v in a["top_insertions"]))
        for w in a["worst_utterances"]:
            print(f"  {w['edits']} edits: {w['reference']!r}\n           -> {w['hypothesis']!r}")

    result = {
        "benchmark": "Whisper tiers: WER and latency on synthetic caller utterances (espeak-ng and Piper voices), "
                     "16 kHz and phone path",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(**versions()),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "conditions": {**idle, "loadavg_1m_at_end": loadavg(),
                       "transcriber": "engine.stt.WhisperTranscriber: int8, cpu; tier = model@window/beam"},
        "duration_s": round(time.monotonic() - started, 1),
        "target": target, "cases": cases, "latency_sweep": sweeps, "error_analysis": analysis,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out} ({result['duration_s']} s)")


if __name__ == "__main__":
    main()
