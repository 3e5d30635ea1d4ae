"""Sesame CSM-1B through transformers' `CsmForConditionalGeneration`: the TTS for GPU hosts.

CSM's backbone emits one frame of Mimi codebooks per step (12.5 frames a second,
80 ms of 24 kHz audio each); its depth decoder fills in the frame's codebooks.
`synthesize` runs generation on its own thread with a streamer that hands each
frame over as it is made, and decodes audio every `chunk_frames` frames, so the
first audio leaves long before the sentence is done. Mimi's decoder is causal:
each chunk is decoded together with the `context_frames` before it and only the
new samples are yielded, so the seams have the left context they need (no clicks)
and the cost per chunk stays flat however long the sentence runs.
Cancelling (leaving the generator) stops generation at the next frame.

On a CUDA host the whole synthesis runs on this process's own CUDA stream.
Weights come from a local directory (`tts.voice`), fetched ahead of time: nothing
is downloaded at run time. Needs the `csm` extra (torch, transformers).
"""

from __future__ import annotations

import importlib
import queue
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from engine.codec import Pcm16


def _module(name: str) -> Any:
    """torch and transformers, untyped: they are optional (the csm extra) and their stubs are partial."""
    return importlib.import_module(name)


END = object()  # generation finished (or failed: then the exception follows it)


class CsmTts:
    """Sesame CSM through transformers, streamed: frames generated on a thread, decoded every few frames."""

    context_frames = 12  # ~1 s of left context for each decode

    def __init__(self, model_dir: str | Path, device: str = "cpu", *, speaker: int = 0, chunk_frames: int = 4,
                 max_audio_s: float = 20.0, temperature: float = 0.9) -> None:
        torch, transformers = _module("torch"), _module("transformers")
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"tts.voice = {str(model_dir)!r}: not a CSM model directory (no config.json); "
                                    "fetch sesame/csm-1b ahead of time and point tts.voice at it")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = transformers.CsmForConditionalGeneration.from_pretrained(path, local_files_only=True,
                                                                        dtype=dtype).to(device)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._setup(model, tokenizer, device, speaker, chunk_frames, max_audio_s, temperature)

    @classmethod
    def from_parts(cls, model: Any, tokenizer: Any, device: str = "cpu", *, speaker: int = 0, chunk_frames: int = 4,
                   max_audio_s: float = 20.0, temperature: float = 0.9) -> CsmTts:
        """Around an already-built model and tokenizer (tests use a tiny randomly initialised one)."""
        tts = cls.__new__(cls)
        tts._setup(model, tokenizer, device, speaker, chunk_frames, max_audio_s, temperature)
        return tts

    def _setup(self, model: Any, tokenizer: Any, device: str, speaker: int, chunk_frames: int, max_audio_s: float,
               temperature: float) -> None:
        torch = _module("torch")
        self._torch = torch
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.speaker = speaker
        self.chunk_frames = chunk_frames
        codec = model.codec_model.config
        self.sample_rate = int(codec.sampling_rate)
        self.frame_rate = float(codec.frame_rate)
        self.max_frames = max(1, int(max_audio_s * self.frame_rate))
        self.temperature = temperature
        self.eos = int(model.config.codebook_eos_token_id)
        self.frames_generated = 0  # by the latest synthesis
        # Our own CUDA stream: synthesis never queues behind another process's (or thread's) kernels.
        self.stream = torch.cuda.Stream(device=device) if device.startswith("cuda") else None

    def _on_stream(self) -> AbstractContextManager[Any]:
        return self._torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()

    def synthesize(self, text: str) -> Iterator[Pcm16]:
        torch = self._torch
        ids = self.tokenizer(f"[{self.speaker}]{text}", return_tensors="pt")["input_ids"].to(self.device)
        frames: queue.SimpleQueue[Any] = queue.SimpleQueue()
        stop = threading.Event()
        model = self.model
        self.frames_generated = 0

        def generate() -> None:
            try:
                with torch.inference_mode(), self._on_stream():
                    model.generate(input_ids=ids, max_new_tokens=self.max_frames, do_sample=True,
                                   temperature=self.temperature, streamer=_FrameStreamer(self, frames, stop))
                frames.put(END)
            except _Cancelled:
                frames.put(END)
            except BaseException as exc:  # hand it to the consumer, who raises it where it can be seen
                frames.put(END)
                frames.put(exc)

        worker = threading.Thread(target=generate, name="csm-generate", daemon=True)
        worker.start()
        codes: list[Any] = []
        decoded = 0  # frames already turned into audio
        try:
            while True:
                frame = frames.get()
                finished = frame is END or bool((frame[:-1] == self.eos).all())  # as generate itself tests it
                if not finished:
                    codes.append(frame)
                if len(codes) > decoded and (finished or len(codes) - decoded >= self.chunk_frames):
                    yield self._decode(codes, decoded)
                    decoded = len(codes)
                if finished:
                    break
            stop.set()
            worker.join()
            if not frames.empty() and isinstance(failure := frames.get(), BaseException):
                raise failure
        finally:
            stop.set()  # the consumer left early (cancel): generation stops at its next frame
            worker.join()  # within one generation step

    def _decode(self, codes: list[Any], start: int) -> Pcm16:
        """Audio for frames codes[start:], decoded with up to `context_frames` frames before them."""
        torch = self._torch
        first = max(0, start - self.context_frames)
        with torch.inference_mode(), self._on_stream():
            stacked = torch.stack(codes[first:], dim=1).unsqueeze(0).to(self.device)  # (1, codebooks, frames)
            audio = self.model.codec_model.decode(stacked).audio_values[0, 0].float().cpu().numpy()
        per_frame = len(audio) // (len(codes) - first)
        audio = audio[(start - first) * per_frame:]
        pcm: Pcm16 = np.clip(audio * 32767.0, -32768, 32767).astype(np.int16)
        return pcm


class _FrameStreamer:
    """Generation hands us the prompt first, then one frame of codebooks per step. CSM's generate drops every
    stopping criterion but max length, so a cancel is raised from here, between steps."""

    def __init__(self, tts: CsmTts, frames: queue.SimpleQueue[Any], stop: threading.Event) -> None:
        self.tts = tts
        self.frames = frames
        self.stop = stop
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if self.stop.is_set():
            raise _Cancelled
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.tts.frames_generated += 1
        self.frames.put(value[0].detach().to("cpu"))

    def end(self) -> None:
        pass


class _Cancelled(Exception):
    """Raised inside generation to stop it: the consumer has gone."""
