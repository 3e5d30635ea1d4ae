"""The TTS process: speaks every call's reply into its outbound ring, sentence by sentence.

Sentences arrive from the LLM as they become speakable; a worker thread
synthesises them in order and writes 20 ms frames into the call's outbound ring
as the audio is produced. The ring never blocks, so the TTS paces itself: when a
call's ring is nearly full (Twilio plays in real time), it waits, checking for
cancellation between frames. The last frame of each sentence carries FLAG_MARK,
so the transport sends a Twilio mark after it, and a `Spoken` message tells the
transport which frames carry which text: that is how it knows what the caller heard.
`Cancel(call, gen)` stops within one frame: nothing more of that generation is written.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.calls import CallTable
from engine.codec import Pcm16
from engine.config import Config
from engine.tts import TtsBackend, make_tts
from ipc.bus import Sender
from ipc.ring import FLAG_END, FLAG_MARK, RingWriter, gen_flags
from ipc.schema import AnyMsg, CallEnded, CallStarted, Cancel, ProcName, RunInfo, Sentence, Spoken, Trace
from procs.child import SyncChild, run_sync_child

log = logging.getLogger("engine.tts")

HEADROOM = 4  # frames kept free in the ring: a full ring would refuse (and count) our frames
WAIT_S = 0.005
STALL_S = 3.0  # a ring the transport drains in real time frees a frame every 20 ms


@dataclass
class Voice:
    """One call's speaking state. Its ring writer is made and used by the worker thread only:
    a Ring's atomic-word objects are per thread."""

    slot: int
    epoch: int
    writer: RingWriter | None = None
    cancelled: set[int] = field(default_factory=set)
    ended: bool = False
    sounded_gen: int = 0  # the latest reply whose first audio has been written


class TtsProc(SyncChild):
    proc: ProcName = "tts"

    def __init__(self, cfg: Config, run: RunInfo) -> None:
        super().__init__(cfg, run)
        self.calls: CallTable[Voice] = CallTable()
        self.tts: TtsBackend | None = None
        self.cancels = 0
        self.sentences = 0
        self.frames_out = 0
        self.failures = 0
        self._jobs: queue.SimpleQueue[tuple[Voice, Sentence] | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    def setup(self) -> None:
        t0 = time.monotonic()
        self.tts = make_tts(self.cfg.tts.backend, self.cfg.tts.voice, self.cfg.tts.device)
        for _ in self.tts.synthesize("Hello."):  # warm the model before the first caller
            pass
        log.info("TTS %s ready in %.1f s (%d Hz)", self.cfg.tts.backend, time.monotonic() - t0, self.tts.sample_rate)
        self._worker = threading.Thread(target=self._speak_loop, name="speak", daemon=True)
        self._worker.start()

    def handle(self, msg: AnyMsg) -> None:
        assert self.pool is not None
        if isinstance(msg, CallStarted):
            self.calls.start(msg.slot, msg.epoch, msg.call_id, Voice(msg.slot, msg.epoch))
        elif isinstance(msg, CallEnded):
            ended = self.calls.end(msg.slot, msg.epoch)
            if ended is not None:
                ended.state.ended = True
        elif isinstance(msg, Cancel):
            self.cancels += 1
            call = self.calls.find(msg.call_id)
            if call is not None:
                call.state.cancelled.add(msg.gen)
        elif isinstance(msg, Sentence):
            call = self.calls.find(msg.call_id)
            if call is not None and msg.gen not in call.state.cancelled:
                self._jobs.put((call.state, msg))

    def _speak_loop(self) -> None:
        sender = Sender(Path(self.run.runtime_dir))
        try:
            while (job := self._jobs.get()) is not None:
                try:
                    self._speak(*job, sender)
                except Exception:  # one bad sentence must not silence every later call
                    self.failures += 1
                    log.exception("speaking %r for call %s failed", job[1].text[:60], job[1].call_id)
        finally:
            sender.close()

    def _speak(self, voice: Voice, sentence: Sentence, sender: Sender) -> None:
        assert self.tts is not None
        rate = self.tts.sample_rate
        frame = rate // 50

        def stopped() -> bool:  # cancelled, call over, or the process is shutting down
            return sentence.gen in voice.cancelled or voice.ended or self.stop.is_set()

        if stopped():
            return
        if sentence.index == 0:
            sender.send("transport", Trace(call_id=sentence.call_id, gen=sentence.gen, stage="tts_start",
                                           at_ns=time.monotonic_ns()))
        pending = np.zeros(0, np.int16)
        stamp = gen_flags(sentence.gen)  # lets the transport drop this reply's frames once it is cancelled
        first_seq: int | None = None
        last_seq = -1
        chunks = self.tts.synthesize(sentence.text) if sentence.text.strip() else iter([np.zeros(frame, np.int16)])
        for chunk in chunks:
            pending = np.concatenate([pending, chunk])
            while len(pending) >= frame:
                if stopped():
                    return  # leaving the generator cancels the synthesis
                last_seq = self._write(voice, pending[:frame], rate, stamp, stopped)
                if first_seq is None:
                    first_seq = last_seq
                    self._first_audio(voice, sentence, sender)
                pending = pending[frame:]
        if stopped():
            return
        tail = np.concatenate([pending, np.zeros(-len(pending) % frame, np.int16)]) if len(pending) else \
            np.zeros(frame, np.int16)  # the flags need a frame to ride on
        flags = stamp | FLAG_MARK | (FLAG_END if sentence.last else 0)
        last_seq = self._write(voice, tail, rate, flags, stopped)
        if last_seq < 0:
            return
        if first_seq is None:
            first_seq = last_seq
            self._first_audio(voice, sentence, sender)
        self.sentences += 1
        sender.send("transport", Spoken(call_id=sentence.call_id, gen=sentence.gen, index=sentence.index,
                                        seq_first=first_seq, seq_last=last_seq, text=sentence.text,
                                        last=sentence.last))

    def _first_audio(self, voice: Voice, sentence: Sentence, sender: Sender) -> None:
        if voice.sounded_gen < sentence.gen:
            voice.sounded_gen = sentence.gen
            sender.send("transport", Trace(call_id=sentence.call_id, gen=sentence.gen, stage="tts_first_audio",
                                           at_ns=time.monotonic_ns()))

    def _write(self, voice: Voice, samples: Pcm16, rate: int, flags: int, stopped: Callable[[], bool]) -> int:
        """Write one frame, waiting for ring space; its seq, or -1 if cancelled while waiting."""
        assert self.pool is not None
        if voice.writer is None:
            voice.writer = RingWriter(self.pool.outbound[voice.slot], voice.epoch)
        writer = voice.writer
        ring = writer.ring
        deadline = time.monotonic() + STALL_S
        while ring.slots - ring.available() <= HEADROOM:
            if stopped():
                return -1
            if time.monotonic() > deadline:
                # Nobody drains this call's ring (its transport side is stuck or gone without a CallEnded):
                # give up on the call rather than hold up every other call's speech.
                log.error("call ring %d not drained for %.0f s: no more speech for it", voice.slot, STALL_S)
                voice.ended = True
                return -1
            time.sleep(WAIT_S)
        if stopped():
            return -1
        seq = writer.next_seq
        writer.write(samples.tobytes(), rate, flags=flags)
        self.frames_out += 1
        return seq

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.calls), "cancels": self.cancels, "sentences": self.sentences,
                "frames_out": self.frames_out, "failures": self.failures}

    def teardown(self) -> None:
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(10)


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    run_sync_child(TtsProc, cfg_bytes, run_bytes)
