"""Piper with its first audio in tens of milliseconds: the voice split where the latent enters the vocoder.

Piper (VITS) turns a whole sentence into a latent (`encoder`: text encoder, duration
predictor, flow; ~60 ms for 6 words here, 140-210 ms for 15-24), then the vocoder turns the latent
into audio, 256 samples per latent frame (`decoder`: most of the cost). Piper runs
both in one graph, so nothing comes out until the whole sentence is decoded. Here
the graph is split once, at the input of `/dec/conv_pre` (with `onnx.utils`), into
two files in the model cache. The encoder runs on the whole sentence; the decoder
runs on chunks of the latent, the first small and each next one at most twice the
last (`chunks`), each with `CONTEXT` frames of latent on both sides so the seams
match decoding the whole latent at once (the vocoder's receptive field is a few
frames; 16 give ~130 dB SNR against the whole, 8 only ~60).

Piper scales each sentence to full range after decoding it all; a stream cannot, so
the decoder's output is scaled by a fixed `gain` instead.
"""

from __future__ import annotations

import json
import os
import shutil
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.codec import Pcm16
from engine.file_digest import file_digest
from engine.onnx_session import cpu_session

FIRST_FRAMES = 16  # 16 x 256 samples = 186 ms of 22.05 kHz audio in the first chunk
NEXT_FRAMES = 128  # at most 1.5 s at a time: each chunk decodes 2 x CONTEXT frames more than it keeps
CONTEXT = 8
"""Latent frames decoded on either side of a chunk. With 8 the seams match the whole-latent decode at 56-73 dB SNR,
at least 19 dB below the noise the phone line's own mu-law codec adds (37 dB); 16 gave 116 dB for 27% more decoder
work and 8 ms more before the first audio; 4 gives 30 dB, worse than the codec (bench/piper_context.py)."""
VOCODER_INPUT = "/dec/conv_pre/Conv"
DURATIONS = "/Ceil_output_0"  # the duration predictor's frames per phoneme id, rounded up: where each word is
GAIN = 1.4  # the raw voice peaks at ~0.45-0.7 of full scale: about Piper's own loudness, seldom clipped


def split_voice(model: Path, cache_dir: Path) -> tuple[Path, Path]:
    """The voice's encoder and decoder graphs, made once into `cache_dir` (keyed by the model file's hash)."""
    digest = file_digest(model, cache_dir)[:16]
    target = cache_dir / "piper-split" / f"{model.stem}-{digest}-v2"  # v2: the encoder says its durations too
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
    durations = [DURATIONS] if any(DURATIONS in n.output for n in graph.node) else []
    inputs = [i.name for i in graph.input]
    tmp = target.with_name(f".{target.name}-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    onnx.utils.extract_model(str(model), str(tmp / "encoder.onnx"), inputs, [latent, *durations])
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


def chunks(frames: int, first: int = FIRST_FRAMES, then: int = NEXT_FRAMES, *,
           ramp: bool = True) -> list[tuple[int, int]]:
    """[start, end) latent frames of each chunk to decode, in order: `first`, then (with `ramp`) each chunk twice
    the one before up to `then` frames (16, 32, 64, 128, 128...), else `then` frames at once.

    A chunk is decoded while the caller hears the chunks before it, so each must decode within their audio. Here
    (bench/piper_chunks.py, idle box) 16 frames (186 ms of audio) decode in ~30 ms, 32 in ~50, 64 in ~87, 128 in
    ~148: after a 186 ms first chunk, a 128-frame second one leaves only 1.24x its decode time of audio out (p50 of
    the worst chunk per sentence; one sentence in 32 stalled on the idle box), and with five callers nearly every
    stall the callers heard began 180 ms into the bot's audio. Doubling leaves 3.6x, for ~5 % more decoder work
    (more chunks, each with its context).
    """
    out, start, size = [], 0, first
    while start < frames:
        end = min(frames, start + size)
        out.append((start, end))
        start, size = end, min(then, 2 * size) if ramp else then
    return out


@dataclass
class Plan:
    """A sentence's audio, and what is known of it before the first sample: how many samples it makes in all,
    and where each of its words starts and ends in them (None when the voice's words could not be matched to the
    text's)."""

    samples: int
    words: list[tuple[int, int]] | None
    audio: Iterator[Pcm16]


def sounds(phonemes: list[str], durations: np.ndarray, hop: int) -> list[tuple[int, int]]:
    """Where each phoneme that makes a sound (not a word break, not punctuation's pause) starts and ends, in
    samples. `durations` are frames per phoneme id: BOS, PAD, then each phoneme followed by its PAD, then EOS
    (piper.phoneme_ids)."""
    ends = np.cumsum(durations.reshape(-1)) * hop
    return [(int(ends[2 + 2 * i - 1]), int(ends[2 + 2 * i])) for i, phoneme in enumerate(phonemes)
            if sounding(phoneme)]


def sounding(phoneme: str) -> bool:
    return phoneme != " " and not unicodedata.category(phoneme[0]).startswith("P")


def word_times(counts: list[int], times: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each word's start and end: word k has `counts[k]` of the sentence's sounding phonemes (`times`), in order.
    espeak reads words apart a little differently than in a sentence ("in the" as one word there), so when the
    counts do not add up to the sentence's, each word gets its share of the sentence's phonemes."""
    total, have = sum(counts), len(times)
    if not total or not have:
        return []
    out, done = [], 0
    for n in counts:
        first = round(done * have / total)
        done += n
        last = max(first, round(done * have / total) - 1)
        out.append((times[min(first, have - 1)][0], times[min(last, have - 1)][1]))
    return out


class StreamingPiper:
    """Piper's voice, synthesised a sentence at a time and decoded in chunks: a `TtsBackend`."""

    def __init__(self, model: Path, cache_dir: Path, *, threads: int = 1, gain: float = GAIN,
                 arena: bool = False, ramp: bool = True) -> None:
        """`arena` turns onnxruntime's CPU memory arena back on, whose RSS only grows (engine/onnx_session.py): for
        bench/tts_rss.py's comparison only. `ramp`: chunks grow from the first (see `chunks`)."""
        self.ramp = ramp
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
        self._ids = self._voice.config.phoneme_id_map  # a phoneme missing from it is dropped from the ids

    def latents(self, text: str) -> Iterator[tuple[np.ndarray, list[tuple[int, int]] | None]]:
        """Each sentence of `text` as its latent, (1, channels, frames), and where its sounding phonemes are
        (samples; None if the voice does not say its durations)."""
        for phonemes in self._voice.phonemize(text):
            if not phonemes:
                continue
            ids = np.array([self._voice.phonemes_to_ids(phonemes)], np.int64)
            latent, *durations = self._encoder.run(None, {"input": ids, "scales": self._scales,
                                                          "input_lengths": np.array([ids.shape[1]], np.int64)})
            known = durations and durations[0].size == ids.shape[1] and all(p in self._ids for p in phonemes)
            yield latent, sounds(phonemes, durations[0], self.hop) if known else None

    def decode(self, latent: np.ndarray, start: int, end: int) -> np.ndarray:
        """Audio of latent frames [start, end), decoded with up to CONTEXT frames of latent on either side."""
        lo, hi = max(0, start - CONTEXT), min(latent.shape[2], end + CONTEXT)
        audio = self._decoder.run(None, {self._latent_name: latent[:, :, lo:hi]})[0].reshape(-1)
        return np.asarray(audio[(start - lo) * self.hop:(end - lo) * self.hop], np.float32)

    def synthesize(self, text: str) -> Iterator[Pcm16]:
        yield from self.planned(text).audio

    def planned(self, text: str) -> Plan:
        """How many samples `text` will make in all and where its words are, known once its latents are made (the
        encoder is the cheap part), and the audio. The TTS tells the transport, with the sentence's first frame,
        which frames will carry it and when each word is: a caller who cuts in mid-sentence heard known words.
        Each word of the text (split at spaces) gets a time: "49" as the two words espeak says for it."""
        made = list(self.latents(text))
        times: list[tuple[int, int]] | None = []
        offset = 0
        for latent, sentence in made:
            if times is not None and sentence is not None:
                times += [(offset + start, offset + end) for start, end in sentence]
            else:
                times = None
            offset += latent.shape[2] * self.hop
        words = None if times is None else word_times([self._sounds_in(word) for word in text.split()], times)
        return Plan(offset, words or None, self._decoded([latent for latent, _ in made]))

    def _sounds_in(self, word: str) -> int:
        """How many sounding phonemes espeak makes of `word` on its own."""
        return sum(sounding(p) for sentence in self._voice.phonemize(word) for p in sentence)

    def _decoded(self, latents: list[np.ndarray]) -> Iterator[Pcm16]:
        for latent in latents:
            for start, end in chunks(latent.shape[2], ramp=self.ramp):
                audio = self.decode(latent, start, end) * self.gain
                yield np.clip(audio * 32767.0, -32768, 32767).astype(np.int16)
