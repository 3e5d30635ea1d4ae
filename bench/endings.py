"""Last words of a turn: does padding the end of the utterance sent to Whisper keep their endings?

The speech process sends Whisper the turn's audio from where the VAD heard speech start (less
`speech.prefix_pad_ms`) to where its silence began. Weak final sounds (s, f, th, the "-ly" of
"quickly") fall below the VAD before they end, so they are cut: "coins" is heard as "coin".
`speech.suffix_pad_ms` adds that much of the audio after the silence began; it is already in hand
when the turn ends (a pause is `speech.pause_ms` of silence), so it costs no waiting.

Each sentence below ends on such a word. Piper's neural voice (en_US-joe-medium) speaks it, at 8 kHz
through the phone path (μ-law, the engine's resampler), followed by 1 s of line noise. Silero VAD
and the engine's `Endpointer` (the engine's settings) find the utterance, as on a call; then
`WhisperTranscriber` (tiny.en, the engine's defaults) transcribes [start, end + pad) for each pad.
Scored with bench/wer.py's normaliser: corpus WER, and how many last words came out right.
Latency: the wall time of each transcription (the pad is audio Whisper must encode too).

    python bench/endings.py                  # prints a table, writes bench/results/endings.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from bench.common import loadavg, machine_info, wait_for_idle  # noqa: E402
from bench.wer import align, normalise, synthesise  # noqa: E402
from engine.config import SpeechSection  # noqa: E402
from engine.endpointer import Endpoint, Endpointer  # noqa: E402
from engine.stt import WhisperTranscriber, resolve_model  # noqa: E402
from engine.vad import WINDOW, SileroVad, VadStream  # noqa: E402
from tests.speech_helpers import line_noise, phone_path  # noqa: E402

Float32 = npt.NDArray[np.float32]
RATE = 16_000
PADS_MS = (0, 100, 150, 250)
SENTENCES = (
    "I found a jar full of old coins.", "Please send it over quickly.", "The storm tore the roof off.",
    "We went to see the cliffs.", "I left my gloves on the bus.", "She told me the whole truth.",
    "It has been about six months.", "Bring some warm clothes.", "He fixed it himself.",
    "They have two cats and a fish.", "Check the depth.", "The meeting went smoothly.",
    "I need new shoes.", "Say hello to your friends.", "That is all for both of us.",
    "Send me the price list.", "The package arrived safely.", "It was a surprise.",
    "I paid with cash.", "Call me at the office.", "She spoke softly.", "We need more tests.",
    "The kids are playing outside.", "Turn left after the bridge.",
)


def endpoint(vad: SileroVad, cfg: SpeechSection, audio: Float32) -> Endpoint:
    """Where the engine's endpointer puts the turn, fed Silero's probabilities window by window."""
    n = WINDOW[RATE]
    stream, endpointer = VadStream(RATE), Endpointer(cfg, RATE)
    for start in range(0, len(audio) - n + 1, n):
        prob = float(vad.infer(audio[None, start:start + n], [stream])[0])
        for event in endpointer.feed(prob, start, n):
            if isinstance(event, Endpoint):
                return event
    raise RuntimeError("no end of turn found")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voice", choices=["piper-phone", "phone"], default="piper-phone",
                    help="Piper's neural voice (default) or espeak-ng's formant one, both through the phone path")
    ap.add_argument("--json", default=str(ROOT / "bench/results/endings.json"))
    args = ap.parse_args()
    idle = wait_for_idle(1.0, 120)
    cfg = SpeechSection()
    vad = SileroVad()
    stt = WhisperTranscriber(resolve_model("tiny.en", Path(cfg.model_cache_dir).expanduser()),
                             min_window_s=cfg.stt_min_window_s, pad_s=cfg.stt_pad_s)
    clips = []
    for text in SENTENCES:
        speech = synthesise(args.voice, text)
        noise = phone_path(line_noise(1.25), rate=RATE).astype(np.float32) * np.float32(1 / 32768)
        audio = np.concatenate([noise[: RATE // 4], speech, noise[RATE // 4:]])  # an idle line either side
        clips.append((text, audio, endpoint(vad, cfg, audio)))
    stt.transcribe(clips[0][1][: RATE])  # warm-up
    cases: list[dict[str, Any]] = []
    for pad_ms in PADS_MS:
        pad = pad_ms * RATE // 1000
        edits = ref_tokens = last_right = 0
        ms: list[float] = []
        misses: list[tuple[str, str]] = []
        for text, audio, ep in clips:
            t0 = time.perf_counter()
            heard = stt.transcribe(audio[ep.start: ep.end + pad])
            ms.append((time.perf_counter() - t0) * 1000)
            ref, hyp = normalise(text), normalise(heard)
            edits += align(ref, hyp).edits
            ref_tokens += len(ref)
            if hyp and hyp[-1] == ref[-1]:
                last_right += 1
            else:
                misses.append((text, heard))
        cases.append({"suffix_pad_ms": pad_ms, "wer": edits / ref_tokens, "edits": edits, "ref_tokens": ref_tokens,
                      "last_word_right": last_right, "sentences": len(clips),
                      "stt_ms_p50": statistics.median(ms), "stt_ms_p90": sorted(ms)[int(0.9 * (len(ms) - 1))],
                      "misses": misses})
    base = cases[0]
    print(f"{'pad ms':>7}{'WER':>8}{'vs 0 ms':>9}{'last word right':>17}{'stt p50 ms':>12}{'p90':>7}")
    for c in cases:
        ratio = c["wer"] / base["wer"] if base["wer"] else float("nan")
        print(f"{c['suffix_pad_ms']:>7}{c['wer']:>8.1%}{ratio:>9.2f}{c['last_word_right']:>10}/{c['sentences']:<6}"
              f"{c['stt_ms_p50']:>12.0f}{c['stt_ms_p90']:>7.0f}")
    for c in cases:
        for text, heard in c["misses"]:
            print(f"  pad {c['suffix_pad_ms']:>3} ms: {text!r} heard as {heard!r}")
    out = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine_info(), "idle_wait": idle, "loadavg_1m_at_end": loadavg(),
           "voice": {"piper-phone": "piper en_US-joe-medium", "phone": "espeak-ng"}[args.voice] + ", 8 kHz phone path",
           "stt": "tiny.en int8, 1 thread",
           "endpointer": {"pause_ms": cfg.pause_ms, "end_silence_ms": cfg.end_silence_ms,
                          "prefix_pad_ms": cfg.prefix_pad_ms, "vad_threshold": cfg.vad_threshold},
           "cases": cases}
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
