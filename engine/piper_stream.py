"""Piper with its first audio in tens of milliseconds: the voice split where the latent enters the vocoder.

Piper (VITS) turns a whole sentence into a latent (`encoder`: text encoder, duration
predictor, flow; ~65 ms for a 5 s sentence here), then the vocoder turns the latent
into audio, 256 samples per latent frame (`decoder`: most of the cost). Piper runs
both in one graph, so nothing comes out until the whole sentence is decoded. Here
the graph is split once, at the input of `/dec/conv_pre` (with `onnx.utils`), into
two files in the model cache. The encoder runs on the whole sentence; the decoder
runs on chunks of the latent, the first small, each with `CONTEXT` frames of latent
on both sides so the seams match decoding the whole latent at once (the vocoder's
receptive field is a few frames; 16 give ~130 dB SNR against the whole, 8 only ~60).

Piper scales each sentence to full range after decoding it all; a stream cannot, so
the decoder's output is scaled by a fixed `gain` instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine.codec import Pcm16
from engine.onnx_session import cpu_session

FIRST_FRAMES = 16  # 16 x 256 samples = 186 ms of 22.05 kHz audio in the first chunk
NEXT_FRAMES = 128  # then 1.5 s at a time: each chunk decodes 2 x CONTEXT frames more than it keeps
CONTEXT = 16
VOCODER_INPUT = "/dec/conv_pre/Conv"
GAIN = 1.4  # the raw voice peaks at ~0.45-0.7 of full scale: about Piper's own loudness, seldom clipped


def split_voice(model: Path, cache_dir: Path) -> tuple[Path, Path]:
    """The voice's encoder and decoder graphs, made once into `cache_dir` (keyed by the model file's hash)."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    target = cache_dir / "piper-split" / f"{model.stem}-{digest}"
    encoder, decoder = target / "encoder.onnx", target / "decoder.onnx"
    if encoder.is_file() and decoder.is_file():
        return encoder, decoder
    import onnx
    import onnx.utils

    graph = onnx.load(str(model)).graph
    node = next((n for n in graph.node if n.name == VOCODER_INPUT), None)
    if node is None:
        raise ValueError(f"{model}: no {VOCODER_INPUT} node: not a Piper VITS voice this engine can stream")
    latent = node.input[0]
    inputs = [i.name for i in graph.input]
    tmp = target.with_name(f".{target.name}-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    onnx.utils.extract_model(str(model), str(tmp / "encoder.onnx"), inputs, [latent])
    onnx.utils.extract_model(str(model), str(tmp / "decoder.onnx"), [latent], [graph.output[0].name])
    (tmp / "split.json").write_text(json.dumps({"model": str(model), "latent": latent}))
    try:
        os.replace(tmp, target)  # atomic: a process starting beside this one never sees half a split
    except OSError:  # another one made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return encoder, decoder


def piper_voice(model: Path, session: Any) -> Any:
    """A `piper.PiperVoice` of `model` (its config beside it, `<model>.json`) that runs `session`: Piper's own
    `load` would make a session of its choosing (with onnxruntime's memory arena), ours has none."""
    from piper import PiperVoice
    from piper.config import PiperConfig

    config = PiperConfig.from_dict(json.loads(Path(f"{model}.json").read_text(encoding="utf-8")))
    return PiperVoice(session=session, config=config)


def chunks(frames: int, first: int = FIRST_FRAMES, then: int = NEXT_FRAMES) -> list[tuple[int, int]]:
    """[start, end) latent frames of each chunk to decode, in order."""
    out, start = [], 0
    while start < frames:
        end = min(frames, start + (first if start == 0 else then))
        out.append((start, end))
        start = end
    return out


class StreamingPiper:
    """Piper's voice, synthesised a sentence at a time and decoded in chunks: a `TtsBackend`."""

    def __init__(self, model: Path, cache_dir: Path, *, threads: int = 1, gain: float = GAIN,
                 arena: bool = False) -> None:
        """`arena` turns onnxruntime's CPU memory arena back on, whose RSS only grows (engine/onnx_session.py): for
        bench/tts_rss.py's comparison only."""
        self._voice: Any = piper_voice(model, session=None)  # its phonemizer and config; never the whole graph
        config = self._voice.config
        self.sample_rate = int(config.sample_rate)
        self.hop = int(config.hop_length)
        self.gain = gain
        self._scales = np.array([config.noise_scale, config.length_scale, config.noise_w_scale], np.float32)
        encoder, decoder = split_voice(model, cache_dir)
        self._encoder = cpu_session(encoder, threads, arena=arena)
        self._decoder = cpu_session(decoder, threads, arena=arena)
        self._latent_name = self._decoder.get_inputs()[0].name

    def latents(self, text: str) -> Iterator[np.ndarray]:
        """Each sentence of `text` as its latent, (1, channels, frames)."""
        for phonemes in self._voice.phonemize(text):
            if not phonemes:
                continue
            ids = np.array([self._voice.phonemes_to_ids(phonemes)], np.int64)
            latent, = self._encoder.run(None, {"input": ids, "input_lengths": np.array([ids.shape[1]], np.int64),
                                               "scales": self._scales})
            yield latent

    def decode(self, latent: np.ndarray, start: int, end: int) -> np.ndarray:
        """Audio of latent frames [start, end), decoded with up to CONTEXT frames of latent on either side."""
        lo, hi = max(0, start - CONTEXT), min(latent.shape[2], end + CONTEXT)
        audio = self._decoder.run(None, {self._latent_name: latent[:, :, lo:hi]})[0].reshape(-1)
        return np.asarray(audio[(start - lo) * self.hop:(end - lo) * self.hop], np.float32)

    def synthesize(self, text: str) -> Iterator[Pcm16]:
        yield from self.planned(text)[1]

    def planned(self, text: str) -> tuple[int, Iterator[Pcm16]]:
        """How many samples `text` will make in all, known once its latents are made (the encoder is the cheap
        part), and the audio. The TTS uses the count to tell the transport, with the sentence's first frame,
        which frames will carry it: a caller who cuts in mid-sentence then heard a known share of it."""
        latents = list(self.latents(text))
        return sum(latent.shape[2] for latent in latents) * self.hop, self._decoded(latents)

    def _decoded(self, latents: list[np.ndarray]) -> Iterator[Pcm16]:
        for latent in latents:
            for start, end in chunks(latent.shape[2]):
                audio = self.decode(latent, start, end) * self.gain
                yield np.clip(audio * 32767.0, -32768, 32767).astype(np.int16)
