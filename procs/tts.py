"""The TTS process: a thin shell around `engine.speaking` (which sentences to speak, cut into ring frames).

Bus messages go to `Speaking` on the main thread; the sentences it answers go to a
worker thread's `Schedule` (engine.tts_schedule). The worker speaks a piece of
audio at a time for the call whose caller runs out of audio first, writing each
20 ms frame into that call's outbound ring. The ring never blocks: a call whose
ring is full (Twilio plays in real time) waits its turn while other calls speak.
Each sentence's `Spoken` span goes to the transport; trace stages go to this
process's own trace sink.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from engine.codec import Pcm16
from engine.config import Config
from engine.line_cache import LineCache
from engine.privacy import spoken
from engine.speaking import SentenceJob, SentenceRun, Speaking, Stage, Voice
from engine.trace import TraceSink
from engine.tts import TtsBackend, make_tts
from engine.tts_schedule import Queued, Schedule
from ipc.bus import Sender
from ipc.ring import RingWriter
from ipc.schema import AnyMsg, CallEnded, CallStarted, Cancel, ProcName, RunInfo, Sentence, Spoken
from procs.child import SyncChild, run_sync_child

log = logging.getLogger("engine.tts")

FIRST_WORDS_GRACE_MS = 150
"""A reply about to run dry within this long is spoken for before another reply's first words: a reply's next chunk
takes ~50 ms to make on an idle box (bench/piper_chunks.py), 2-3x that beside other calls' Whisper and LLM work,
and a new reply's first piece (its sentence's encoder, then a chunk) 60-200 ms, so a reply begun 186 ms ago that
waited behind one ran dry (a stall log with 6 callers)."""
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
        self.schedule = Schedule()  # the worker's own
        self.lines = LineCache(int(cfg.tts.line_cache_mb * 1e6)) if cfg.tts.line_cache_mb else None  # the worker's
        self._worker: threading.Thread | None = None

    def setup(self) -> None:
        t0 = time.monotonic()
        t = self.cfg.tts
        self.tts = make_tts(t.backend, t.voice, t.device, stream=t.stream,
                            cache_dir=Path(t.model_cache_dir).expanduser(), ramp=t.stream_ramp)
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
            idle = False
            while not self.stop.is_set() and self._take_jobs(idle):
                item = self.schedule.pick(self._audio_left_ms, self._room, first_words_grace=FIRST_WORDS_GRACE_MS)
                idle = item is None
                if item is None:
                    self._give_up_on_stalled()
                else:
                    self._step(item, sender)
        finally:
            self.schedule.clear()
            sender.close()

    def _take_jobs(self, idle: bool) -> bool:
        """Move the sentences that came in to the schedule; when it was `idle`, wait for one first (for ever
        if it is empty, a short poll if its calls' rings are full). False once told to stop."""
        wait: float | None = 0
        if idle:
            wait = WAIT_S if len(self.schedule) else None
        while True:
            try:
                job = self._jobs.get(timeout=wait) if wait != 0 else self._jobs.get_nowait()
            except queue.Empty:
                return True
            if job is None:
                return False
            self.schedule.add(job)
            wait = 0

    def _step(self, item: Queued, sender: Sender) -> None:
        """One piece of `item`'s sentence: the frames its ring has room for, making audio if none is ready."""
        assert self.tts is not None
        job = item.job
        job.voice.stalled_since = None
        try:
            if item.run is None:
                item.run = SentenceRun(job, self.tts, lambda out: self._emit(job, out, sender), self.lines)
            outcome = item.run.step(self._room(job.voice), lambda frame, flags: self._write(job, frame, flags))
        except Exception:  # one bad sentence must not silence every later call
            self.failures += 1
            log.exception("speaking %s for call %s failed", spoken(job.sentence.text[:60], self.cfg.engine.log_private),
                          job.sentence.call_id)
            outcome = "stopped"
        if outcome is not None:
            self.sentences += outcome == "spoken"
            self.schedule.done(item)

    def _emit(self, job: SentenceJob, out: Spoken | Stage, sender: Sender) -> None:
        if isinstance(out, Spoken):
            sender.send("transport", out)
        elif self.trace is not None:
            self.trace.add(job.sentence.call_id, job.sentence.gen, out.name, time.monotonic_ns())

    def _writer(self, voice: Voice) -> RingWriter:
        assert self.pool is not None
        if voice.writer is None:  # made here, by the worker: a ring's atomic-word objects are per thread
            voice.writer = RingWriter(self.pool.outbound[voice.slot], voice.epoch)
        writer: RingWriter = voice.writer
        return writer

    @staticmethod
    def _audio_left_ms(voice: Voice) -> int:
        return int(voice.audio_left(time.monotonic()) * 1000)

    def _room(self, voice: Voice) -> int:
        """Frames the call's ring takes now, keeping HEADROOM free (a full ring would refuse and count them)."""
        ring = self._writer(voice).ring
        return int(ring.slots - ring.available()) - HEADROOM

    def _write(self, job: SentenceJob, samples: Pcm16, flags: int) -> int:
        writer = self._writer(job.voice)
        seq: int = writer.next_seq
        assert self.tts is not None
        writer.write(samples.tobytes(), self.tts.sample_rate, flags=flags)
        job.voice.wrote(len(samples) / self.tts.sample_rate, time.monotonic())
        self.frames_out += 1
        return seq

    def _give_up_on_stalled(self) -> None:
        """A call whose ring nobody drains (its transport side stuck or gone without a CallEnded) gets no more
        speech after STALL_S; it never holds up another call's meanwhile."""
        now = time.monotonic()
        for voice in self.schedule.blocked(self._room):
            if voice.stalled_since is None:
                voice.stalled_since = now
            elif now - voice.stalled_since > STALL_S:
                log.error("call ring %d not drained for %.0f s: no more speech for it", voice.slot, STALL_S)
                voice.ended = True

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.speaking.calls), "queued": self._jobs.qsize() + len(self.schedule),
                "cancels": self.speaking.cancels, "sentences": self.sentences,
                "frames_out": self.frames_out, "failures": self.failures,
                "lines_kept": len(self.lines) if self.lines is not None else 0,
                "line_hits": self.lines.hits if self.lines is not None else 0}

    def teardown(self) -> None:
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(10)
        if self.trace is not None:
            self.trace.close()


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    run_sync_child(TtsProc, cfg_bytes, run_bytes)
