"""The speech process: hears every call. VAD and endpointing on the main loop, Whisper on a worker.

The main loop wakes every `speech.vad_tick_ms` while more than one call is live (a call
alone, or with 0, on the pool's inbound doorbell as each frame is written), drains every
call's ring, runs batched VAD rounds (`engine.hearing`), and publishes what they mean. A
transcription worker thread takes jobs off a queue, so VAD never waits for
Whisper; it takes every job ready at once as one batch (several calls' turns
ending together cost one encoder pass), and when a batch is done it wakes the
main loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

import numpy as np

from engine.calls import CallTable
from engine.config import Config
from engine.hearing import Hearing, Job
from engine.privacy import spoken
from engine.stt import Transcriber, WhisperTranscriber, resolve_model
from engine.turn_model import SmartTurn
from engine.vad import SileroVad
from ipc.ring import RingReader
from ipc.schema import AnyMsg, CallEnded, CallStarted, Msg, ProcName, RunInfo, Transcript
from procs.child import SyncChild, run_sync_child

log = logging.getLogger("engine.speech")

BUS_POLL_S = 0.02  # longest a bus message waits while audio is flowing


class SpeechProc(SyncChild):
    """The speech process: rings drained and VAD run on the main loop, Whisper (batched) on one worker thread."""

    proc: ProcName = "speech"

    def __init__(self, cfg: Config, run: RunInfo) -> None:
        super().__init__(cfg, run)
        self.calls: CallTable[RingReader] = CallTable()
        self.frames_in = 0
        self.transcripts = 0
        self.vad_passes = 0
        self.hearing: Hearing | None = None
        self.transcriber: Transcriber | None = None
        self.turn_model: SmartTurn | None = None
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._finished = threading.Event()  # the worker has put jobs on `_done`
        self._next_tick = 0.0

    def setup(self) -> None:
        assert self.pool is not None
        s = self.cfg.speech
        self.pool.doorbells["inbound"].reset_waiters()  # we are its only sleeper
        self.hearing = Hearing(SileroVad(), s, self.cfg.transport.inbound_rate,
                               barge_in_ms=self.cfg.conversation.barge_in_min_speech_ms)
        t0 = time.monotonic()
        model_dir = resolve_model(s.stt_model, Path(s.model_cache_dir).expanduser())
        self.transcriber = WhisperTranscriber(model_dir, s.stt_device, s.stt_compute_type, s.stt_threads,
                                              pad_s=s.stt_pad_s, min_window_s=s.stt_min_window_s,
                                              beam_size=s.stt_beam_size)
        if s.turn_model == "smart-turn":
            self.turn_model = SmartTurn()
            self.turn_model.complete([np.zeros(16000, np.float32)])  # warm it before the first caller pauses
        log.info("loaded VAD, Whisper %s (%s, %s) and turn model %s in %.1f s", s.stt_model, s.stt_device,
                 s.stt_compute_type, s.turn_model, time.monotonic() - t0)
        self._worker = threading.Thread(target=self._transcribe_loop, name="stt", daemon=True)
        self._worker.start()

    def _transcribe_loop(self) -> None:
        """Worker thread: the turn model and Whisper, on every job ready at once (one batch each, up to
        `speech.stt_batch`); wakes the main loop when a batch is done."""
        assert self.pool is not None
        bell = self.pool.doorbell_view("inbound")
        try:
            while (batch := self._take_batch()) is not None:
                jobs = [job for job in batch if not job.cancelled]
                done = self._judge([j for j in jobs if j.judge]) + self._transcribe([j for j in jobs if not j.judge])
                for job in done:
                    self._done.put(job)
                if done:
                    self._finished.set()
                    bell.ring()
        finally:
            bell.close()

    def _take_batch(self) -> list[Job] | None:
        """The next job and every other one queued behind it (a batch's worth); None once told to stop."""
        first = self._jobs.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.cfg.speech.stt_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)  # stop after this batch
                break
            batch.append(job)
        return batch

    def _transcribe(self, jobs: list[Job]) -> list[Job]:
        assert self.transcriber is not None
        if not jobs:
            return []
        start_ns = time.monotonic_ns()
        for job in jobs:
            job.stt_start_t_ns = start_ns
        try:
            texts = self.transcriber.transcribe_many([job.audio for job in jobs])
        except Exception:  # a bad utterance must not kill every call's transcription
            log.exception("transcription failed (calls %s)", _which(jobs))
            texts = [""] * len(jobs)
        stt_ms = (time.monotonic_ns() - start_ns) // 1_000_000
        for job, text in zip(jobs, texts, strict=True):
            job.stt_ms = stt_ms
            job.text = text  # last: the main loop publishes as soon as it sees the text
        return jobs

    def _judge(self, jobs: list[Job]) -> list[Job]:
        """Score pauses with the turn model; none if it failed (then the end-of-turn silence decides)."""
        if not jobs:
            return []
        assert self.turn_model is not None
        try:
            scores = self.turn_model.complete([job.audio for job in jobs])
        except Exception:
            log.exception("turn model failed (calls %s)", _which(jobs))
            return []
        for job, score in zip(jobs, scores, strict=True):
            job.complete = score
        return jobs

    def handle(self, msg: AnyMsg) -> None:
        assert self.pool is not None and self.hearing is not None
        if isinstance(msg, CallStarted):
            accepted, displaced = self.calls.start(msg.slot, msg.epoch, msg.call_id,
                                                   RingReader(self.pool.inbound[msg.slot], msg.epoch))
            if displaced is not None:
                self.hearing.end_call(displaced.call_id)
            if accepted:
                self.hearing.add_call(msg.call_id)
        elif isinstance(msg, CallEnded):
            ended = self.calls.end(msg.slot, msg.epoch)
            if ended is not None:
                ended.state.discard_all()
                self.hearing.end_call(ended.call_id)

    def _publish(self, msgs: list[Msg]) -> None:
        assert self.bus is not None
        for msg in msgs:
            self.bus.send("transport", msg)  # its conductor decides what the caller's speech means
            if isinstance(msg, Transcript):
                self.transcripts += 1
                log.info("call %s turn %d: %s (%d ms audio, stt %d ms%s)", msg.call_id, msg.turn,
                         spoken(msg.text, self.cfg.engine.log_private), msg.audio_ms, msg.stt_ms,
                         ", speculative" if msg.speculative else "")

    def work(self) -> int:
        """Drain rings, run VAD rounds, hand out jobs, publish results. Returns frames read."""
        assert self.hearing is not None
        n = 0
        for call in self.calls.values():
            frames = []
            while (frame := call.state.read()) is not None:
                frames.append(frame)
            if frames:  # a pass's frames heard as one piece (so at 8 kHz they are resampled in one go)
                self.hearing.add_audio(call.call_id, b"".join(f.payload for f in frames), frames[-1].t_ns)
                n += len(frames)
        self.frames_in += n
        rounds = self.hearing.vad_batches
        while any(ear.window_ready() for ear in self.hearing.ears.values()):
            self._publish(self.hearing.vad_round())
        if self.hearing.vad_batches > rounds:
            self.vad_passes += 1  # a wake-up that ran VAD: its first inference runs with cold caches, the rest warm
        for job in self.hearing.take_jobs():
            self._jobs.put(job)
        while True:
            try:
                done = self._done.get_nowait()
            except queue.Empty:
                break
            self._publish(self.hearing.finished(done))
        return n

    def wait_for_work(self, timeout_s: float) -> None:
        assert self.pool is not None and self.bus is not None
        if not len(self.calls) and self._done.empty():
            super().wait_for_work(timeout_s)
            return
        self.poll_bus()
        if (tick_s := self.cfg.speech.vad_tick_ms / 1000) and len(self.calls) > 1:
            self.work()
            self._nap(tick_s, timeout_s)
        elif self.work() == 0:
            readers = [c.state for c in self.calls.values()]
            bell = self.pool.doorbells["inbound"]
            bell.wait(lambda: not self._done.empty() or any(r.ring.available() for r in readers),
                      min(timeout_s, BUS_POLL_S), self.cfg.ring.spin_us * 1e-6)
            self.work()

    def _nap(self, tick_s: float, timeout_s: float) -> None:
        """Sleep to the next tick, or until the worker finishes a batch. Not on the inbound doorbell: a transport
        writing a frame finds no one waiting there and rings no one."""
        now = time.monotonic()
        if self._next_tick <= now:  # keep the cadence; a tick missed (a slow round, a stall) is skipped, not made up
            self._next_tick += tick_s * (1 + (now - self._next_tick) // tick_s)
        if self._finished.wait(min(timeout_s, self._next_tick - now)):
            self._finished.clear()

    def stats(self) -> dict[str, int]:
        h = self.hearing
        verdicts = {f"turns_{k}": v for k, v in h.verdicts.items()} if h else {}
        return {"calls": len(self.calls), "queued": self._jobs.qsize(), "frames_in": self.frames_in,
                "transcripts": self.transcripts,
                "vad_batches": h.vad_batches if h else 0, "vad_windows": h.vad_windows if h else 0,
                "vad_passes": self.vad_passes, **verdicts}

    def teardown(self) -> None:
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(10)


def _which(jobs: list[Job]) -> str:
    return ", ".join(f"{j.call_id} turn {j.turn}" for j in jobs)


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    run_sync_child(SpeechProc, cfg_bytes, run_bytes)
