"""The LLM process: a thin shell around `engine.thinking` (every call's dialogue, and the replies to make).

Bus messages go to `Thinking` on the main thread; the reply jobs it answers go to the
worker thread of the call's slot (`llm.slots` of them, so that many calls' replies
are made at once, each call's in order, and one more for a call that begins alone:
`llm.solo_prefill_threads`), which runs `generate` with the configured
backend and sends each `Sentence` to the TTS the moment it is speakable (with llama.cpp, a reply past its first
piece gives way while another makes its first: engine.first_pieces). `Cancel` arrives on the urgent
lane and is seen by the worker at the next delta. Trace stages go straight to this
process's own trace sink.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from engine.config import Config
from engine.first_pieces import FirstPieces
from engine.llm import LlmBackend, make_backend
from engine.thinking import Out, Reply, ReplyJob, Thinking, generate
from engine.trace import TraceSink
from ipc.bus import Sender
from ipc.schema import (
    AnyMsg,
    CallEnded,
    CallStarted,
    Cancel,
    Commit,
    Heard,
    History,
    Prepare,
    ProcName,
    Respond,
    RunInfo,
    Sentence,
)
from procs.child import SyncChild, run_sync_child

log = logging.getLogger("engine.llm")


class LlmProc(SyncChild):
    """The llm process: `Thinking` on the main loop, generation on one worker thread."""

    proc: ProcName = "llm"

    def __init__(self, cfg: Config, run: RunInfo) -> None:
        super().__init__(cfg, run)
        self.thinking = Thinking(cfg.llm.system_prompt, slots=cfg.llm.slots)
        # Only where replies decoded together cost each other their speed: a CPU's llama.cpp, not vLLM's GPU batch.
        self.first_pieces = FirstPieces(enabled=cfg.llm.backend == "llamacpp" and cfg.llm.yield_to_first_pieces)
        self.backend: LlmBackend | None = None
        self.trace = TraceSink.open(cfg.engine.trace_file)
        self.generations = 0
        self.prepared = 0
        self.failures = 0
        self.repeats_cut = 0  # replies ended where the model began to say one phrase over and over
        self._jobs: list[queue.SimpleQueue[ReplyJob | None]] = []
        self._workers: list[threading.Thread] = []

    def setup(self) -> None:
        t0 = time.monotonic()
        self.backend = make_backend(self.cfg.llm)
        self.thinking.solo_slot = self.backend.solo_slot
        # Warm the model and cache the system prompt's KV prefix before the first caller speaks.
        for slot in {None, self.backend.solo_slot}:  # each server
            self.backend.stream([{"role": "system", "content": self.cfg.llm.system_prompt},
                                 {"role": "user", "content": "Hello"}], lambda d: True, 1, slot)
        self._jobs = [queue.SimpleQueue() for _ in range(self.thinking.contexts)]
        log.info("LLM %s/%s ready in %.1f s", self.cfg.llm.backend, self.cfg.llm.model, time.monotonic() - t0)
        for slot, jobs in enumerate(self._jobs):
            worker = threading.Thread(target=self._generate_loop, args=(jobs,), name=f"generate-{slot}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def handle(self, msg: AnyMsg) -> None:
        if isinstance(msg, CallStarted | CallEnded | Cancel | Heard | Respond | Commit | Prepare | History):
            for job in self.thinking.handle(msg):
                self._jobs[job.slot].put(job)

    def _generate_loop(self, jobs: queue.SimpleQueue[ReplyJob | None]) -> None:
        """Worker thread of one slot: its calls' replies one at a time, each sentence sent the moment it is
        speakable (one sender: a call's messages to the TTS stay in order)."""
        assert self.backend is not None
        sender = Sender(Path(self.run.runtime_dir))
        try:
            while (job := jobs.get()) is not None:
                try:
                    self._generate(job, sender)
                except Exception:  # one bad reply must not leave every later caller unanswered
                    self.failures += 1
                    log.exception("reply %d for call %s failed", job.gen, job.call_id)
        finally:
            sender.close()

    def _generate(self, job: ReplyJob, sender: Sender) -> None:
        assert self.backend is not None
        if job.prepare:
            if not job.prepare_void():
                self.backend.prefill(job.messages, job.slot)
                self.prepared += 1
            return
        reply = Reply(job, first_clause_words=self.cfg.llm.first_clause_words,
                      max_sentences=self.cfg.llm.max_sentences, shutting_down=self.stop.is_set)

        def emit(out: Out) -> None:
            if isinstance(out, Sentence):
                sender.send("tts", out)
            elif self.trace is not None:
                self.trace.add(job.call_id, job.gen, out.name, time.monotonic_ns())

        if not job.say:
            self.generations += 1
        outcome = generate(reply, self.backend, self.cfg.llm.max_tokens, emit, self.first_pieces)
        if outcome == "failed":
            self.failures += 1
            log.error("call %s gen %d: generation failed: %s", job.call_id, job.gen, reply.error)
        elif outcome == "stopped":
            log.info("call %s gen %d cancelled after %d deltas", job.call_id, job.gen, reply.deltas)
        if reply.repeated:
            self.repeats_cut += 1
            log.info("call %s gen %d: the model repeated itself; the reply ends before the repeats", job.call_id,
                     job.gen)

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.thinking.calls), "queued": sum(jobs.qsize() for jobs in self._jobs),
                "cancels": self.thinking.cancels,
                "generations": self.generations, "prepared": self.prepared, "failures": self.failures,
                "repeats_cut": self.repeats_cut,
                "gave_way": self.first_pieces.yields, "gave_way_ms": self.first_pieces.yielded_ms}

    def teardown(self) -> None:
        for jobs in self._jobs:
            jobs.put(None)
        for worker in self._workers:
            worker.join(10)
        if self.backend is not None:
            try:
                self.backend.close()  # vLLM's engine-core process ends with it
            except Exception:
                log.exception("closing the %s backend failed", self.cfg.llm.backend)
        if self.trace is not None:
            self.trace.close()


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    run_sync_child(LlmProc, cfg_bytes, run_bytes)
