"""What a fixed line costs the TTS process: made afresh on every call, or kept once made (engine/line_cache.py).

Speaks the default greeting, as the LLM process sends it (its `Reply`: one `fixed` `Sentence` per piece), through
`engine.speaking.speak` with the embedded voice (streaming Piper), `--calls` times with no line cache and
`--calls` times from a warm one, and reports the process CPU time and wall time per call (median, p90).
A soak cannot show this: its TTS CPU moves by more than a greeting's cost with how long the model's replies
happened to be.

    python bench/lines.py      # prints a table, writes bench/results/line_cache.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import loadavg, machine_info, wait_for_idle  # noqa: E402
from engine.config import ConversationSection, LlmSection  # noqa: E402
from engine.line_cache import LineCache  # noqa: E402
from engine.speaking import Speaking, speak  # noqa: E402
from engine.thinking import Reply, Thinking, generate  # noqa: E402
from engine.tts import TtsBackend, make_tts  # noqa: E402
from ipc.schema import CallStarted, Respond, Sentence  # noqa: E402


def sentences(line: str) -> list[Sentence]:
    """The `Sentence`s the LLM process sends the TTS to say `line` verbatim (its own `Reply`)."""
    llm = LlmSection()
    thinking = Thinking(llm.system_prompt)
    thinking.handle(CallStarted(call_id="CA", slot=0, epoch=1, inbound_rate=8000))
    job = thinking.handle(Respond(call_id="CA", gen=1, say=line))
    assert job is not None
    outs: list[Any] = []
    generate(Reply(job, first_clause_words=llm.first_clause_words), None, 0, outs.append)  # type: ignore[arg-type]
    return [out for out in outs if isinstance(out, Sentence)]


def one_call(tts: TtsBackend, said: list[Sentence], lines: LineCache | None, n: int) -> tuple[float, float, int]:
    """CPU ms, wall ms and frames of one call's greeting."""
    speaking = Speaking()
    speaking.handle(CallStarted(call_id=f"CA{n}", slot=0, epoch=1, inbound_rate=8000))
    frames: list[Any] = []

    def write(frame: Any, flags: int) -> int:
        frames.append(frame)
        return len(frames) - 1

    cpu0, t0 = time.process_time(), time.perf_counter()
    for sentence in said:
        for job in speaking.handle(msgspec.structs.replace(sentence, call_id=f"CA{n}")):
            speak(job, tts, write, lambda out: None, lines)
    return (time.process_time() - cpu0) * 1000, (time.perf_counter() - t0) * 1000, len(frames)


def summary(runs: list[tuple[float, float, int]]) -> dict[str, float]:
    cpu, wall = [r[0] for r in runs], [r[1] for r in runs]
    return {"cpu_ms_p50": round(statistics.median(cpu), 2), "cpu_ms_p90": round(float(np.percentile(cpu, 90)), 2),
            "wall_ms_p50": round(statistics.median(wall), 2), "audio_s": round(runs[0][2] / 50, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--line", default=ConversationSection().greeting)
    ap.add_argument("--out", default=str(ROOT / "bench/results/line_cache.json"))
    args = ap.parse_args()
    idle = wait_for_idle(1.0, 600)
    tts = make_tts("piper", "en_US-joe-medium")
    for _ in tts.synthesize("Hello."):  # warm, as the TTS process does
        pass
    said = sentences(args.line)
    texts = [s.text for s in said]
    made = summary([one_call(tts, said, None, n) for n in range(args.calls)])
    cache = LineCache(8_000_000)
    one_call(tts, said, cache, -1)  # the first call makes it
    kept = summary([one_call(tts, said, cache, n) for n in range(args.calls)])
    print(f"{args.line!r} as {texts}")
    print(f"{'':<16}{'CPU p50':>9}{'CPU p90':>9}{'wall p50':>10}{'audio':>7}")
    for name, r in (("made each call", made), ("kept", kept)):
        print(f"{name:<16}{r['cpu_ms_p50']:>7.1f}ms{r['cpu_ms_p90']:>7.1f}ms{r['wall_ms_p50']:>8.1f}ms"
              f"{r['audio_s']:>6.2f}s")
    out = {"benchmark": "line_cache", "machine": machine_info(), "conditions": {**idle, "loadavg_1m_at_end": loadavg()},
           "line": args.line, "pieces": texts, "calls": args.calls, "made_each_call": made, "kept": kept}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
