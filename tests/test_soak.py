"""The short soak CI runs: `python -m engine soak` with 8 callers for 60 s and one SIGKILL of each child.

The real engine on its CPU models, scripted callers (questions, barge-ins, keys, silence, hang-ups
mid-word, callers that vanish), and the report's own checks, asserted here one by one: every call
reached an outcome, no inbound frame was lost on a call no speech or transport fault touched, every
killed process came back, and no segment, fd or process leaked. 8 conversing callers are more than 2
cores serve in real time: latency is reported, not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_eight_callers_for_a_minute_with_every_child_killed_once(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "engine", "soak", "--callers", "8", "--duration", "60",
                           "--kill", "speech,llm,tts,transport", "--every", "12", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    print(proc.stdout[-6000:], proc.stderr[-3000:])
    report = json.loads(out.read_text())
    calls = report["calls"]
    assert calls["total"] >= 8
    assert calls["failed"] == 0, calls["failures"]
    assert report["frames"]["inbound_lost_outside_speech_or_transport_faults"] == 0
    assert report["frames"]["no_fault"]["inbound"]["lost"] in (0, None)
    kills = report["kills"]
    assert [k["target"] for k in kills] == ["speech", "llm", "tts", "transport"], kills
    assert all(k.get("restart_s") is not None for k in kills), kills
    assert calls["recovered"] + calls["ended_by_fault"] >= 1  # the kills landed mid-call
    leak = report["leak_check"]
    assert leak["leaks"] == [], leak["leaks"]
    assert leak["after_stop"]["shm_segments"] == [] and leak["after_stop"]["processes"] == 0
    assert report["checks"]["engine_stopped_cleanly"]
    assert proc.returncode == 0, proc.stdout[-3000:]
