"""The models that run all call long hold no onnxruntime memory arena: their memory goes back after each run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from engine.piper_stream import StreamingPiper
from engine.tts import PiperTts, bundled_piper_voice
from engine.turn_model import SmartTurn
from engine.vad import SileroVad


def test_no_per_call_model_keeps_an_onnxruntime_memory_arena(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TTS process's RSS grew from 166 to 428 MiB in 21 minutes of calls with the arena on (bench/tts_rss.py)."""
    made: list[Any] = []

    class Recorded(ort.InferenceSession):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self.get_session_options())

    monkeypatch.setattr(ort, "InferenceSession", Recorded)
    SileroVad()
    SmartTurn()
    StreamingPiper(bundled_piper_voice(), tmp_path)
    PiperTts()
    assert len(made) >= 5  # VAD, Smart Turn, Piper's encoder and decoder, Piper whole
    assert [(o.enable_cpu_mem_arena, o.enable_mem_pattern) for o in made] == [(False, False)] * len(made)
