"""The TTS process: a thin shell around `engine.speaking` (which sentences to speak, cut into ring frames).

Bus messages go to `Speaking` on the main thread; the sentences it answers go to a
worker thread, which runs `speak` with the configured backend and writes each 20 ms
frame into the call's outbound ring as the audio is produced. The ring never
blocks, so the TTS paces itself: when a call's ring is nearly full (Twilio plays in
real time), it waits, checking for cancellation meanwhile. Each sentence's `Spoken`
span goes to the transport; trace stages go to this process's own trace sink.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from engine.codec import Pcm16
from engine.config import Config
from engine.speaking import SentenceJob, Speaking, Stage, speak
from engine.trace import TraceSink
from engine.tts import TtsBackend, make_tts
from ipc.bus import Sender
from ipc.ring import RingWriter
from ipc.schema import AnyMsg, CallEnded, CallStarted, Cancel, ProcName, RunInfo, Sentence, Spoken
from procs.child import SyncChild, run_sync_child

log = logging.getLogger("engine.tts")

HEADROOM = 4  # frames kept free in the ring: a full ring would refuse (and count) our frames
WAIT_S = 0.005
STALL_S = 3.0  # a ring the transport drains in real time frees a frame every 20 ms


class TtsProc(SyncChild):
    """The tts process: `Speaking` on the main loop, synthesis and ring writes on one worker thread."""

    proc: ProcName = "tts"

    def __init__(self, cfg: Config, run: RunInfo) -> None:
        super().__init__(cfg, run)
        self.speaking = Speaking()
        self.tts: TtsBackend | None = None
        self.trace = TraceSink.open(cfg.engine.trace_file)
        self.sentences = 0
        self.frames_out = 0
        self.failures = 0
        self._jobs: queue.SimpleQueue[SentenceJob | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    def setup(self) -> None:
        t0 = time.monotonic()
        t = self.cfg.tts
        self.tts = make_tts(t.backend, t.voice, t.device, stream=t.stream,
                            cache_dir=Path(t.model_cache_dir).expanduser())
        for _ in self.tts.synthesize("Hello."):  # warm the model before the first caller
            pass
        log.info("TTS %s ready in %.1f s (%d Hz)", self.cfg.tts.backend, time.monotonic() - t0, self.tts.sample_rate)
        self._worker = threading.Thread(target=self._speak_loop, name="speak", daemon=True)
        self._worker.start()

    def handle(self, msg: AnyMsg) -> None:
        if isinstance(msg, CallStarted | CallEnded | Cancel | Sentence):
            for job in self.speaking.handle(msg):
                self._jobs.put(job)

    def _speak_loop(self) -> None:
        sender = Sender(Path(self.run.runtime_dir))
        try:
            while (job := self._jobs.get()) is not None:
                try:
                    self._speak(job, sender)
                except Exception:  # one bad sentence must not silence every later call
                    self.failures += 1
                    log.exception("speaking %r for call %s failed", job.sentence.text[:60], job.sentence.call_id)
        finally:
            sender.close()

    def _speak(self, job: SentenceJob, sender: Sender) -> None:
        assert self.tts is not None
        sentence = job.sentence
        rate = self.tts.sample_rate

        def write(frame: Pcm16, flags: int) -> int | None:
            return self._write(job, frame, rate, flags)

        def emit(out: Spoken | Stage) -> None:
            if isinstance(out, Spoken):
                sender.send("transport", out)
            elif self.trace is not None:
                self.trace.add(sentence.call_id, sentence.gen, out.name, time.monotonic_ns())

        if speak(job, self.tts, write, emit, self.stop.is_set) == "spoken":
            self.sentences += 1

    def _write(self, job: SentenceJob, samples: Pcm16, rate: int, flags: int) -> int | None:
        """Write one frame, waiting for ring space; its seq, or None if the sentence was stopped meanwhile."""
        assert self.pool is not None
        voice = job.voice
        if voice.writer is None:  # made here, by the worker: a ring's atomic-word objects are per thread
            voice.writer = RingWriter(self.pool.outbound[voice.slot], voice.epoch)
        writer: RingWriter = voice.writer
        ring = writer.ring
        deadline = time.monotonic() + STALL_S
        while ring.slots - ring.available() <= HEADROOM:
            if job.void() or self.stop.is_set():
                return None
            if time.monotonic() > deadline:
                # Nobody drains this call's ring (its transport side is stuck or gone without a CallEnded):
                # give up on the call rather than hold up every other call's speech.
                log.error("call ring %d not drained for %.0f s: no more speech for it", voice.slot, STALL_S)
                voice.ended = True
                return None
            time.sleep(WAIT_S)
        if job.void() or self.stop.is_set():
            return None
        seq = writer.next_seq
        writer.write(samples.tobytes(), rate, flags=flags)
        self.frames_out += 1
        return seq

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.speaking.calls), "cancels": self.speaking.cancels, "sentences": self.sentences,
                "frames_out": self.frames_out, "failures": self.failures}

    def teardown(self) -> None:
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(10)
        if self.trace is not None:
            self.trace.close()


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    run_sync_child(TtsProc, cfg_bytes, run_bytes)
