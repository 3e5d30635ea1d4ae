"""The LLM process: per-call dialogue, streaming generation, sentence chunking, cancellation.

The transport's conductor asks for each reply with `Respond(call, gen)`: an answer to
what the caller said, generated on the worker thread, or a line to say verbatim
(greeting, re-prompt), which is only chunked and kept in the dialogue. Text deltas
go through the sentence chunker and each speakable piece goes to the TTS as a
`Sentence` the moment it is complete. `Cancel(call, gen)` arrives on the urgent
lane: the worker's delta callback sees it at the next token and stops the model,
and nothing more of that generation is sent. `Heard` replaces the assistant's turn
with what the caller actually heard.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.calls import CallTable
from engine.chunker import SentenceChunker
from engine.config import Config
from engine.dialogue import Dialogue
from engine.llm import LlamaCppBackend, LlmBackend, OpenAIBackend, resolve_gguf
from ipc.bus import Sender
from ipc.schema import AnyMsg, CallEnded, CallStarted, Cancel, Heard, ProcName, Respond, RunInfo, Sentence, Trace
from procs.child import SyncChild, run_sync_child

log = logging.getLogger("engine.llm")


@dataclass
class Mind:
    """One call's state in the LLM process."""

    dialogue: Dialogue
    gen: int = 0
    cancelled: set[int] = field(default_factory=set)
    ended: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Job:
    call_id: str
    mind: Mind
    gen: int
    messages: list[dict[str, str]]
    say: str = ""  # speak this verbatim instead of generating


def make_backend(cfg: Config) -> LlmBackend:
    c = cfg.llm
    if c.backend == "openai":
        return OpenAIBackend(c.base_url, c.model, api_key=c.api_key, temperature=c.temperature)
    if c.backend == "vllm":
        from engine.llm_vllm import VllmBackend

        return VllmBackend(c.model, temperature=c.temperature, gpu_memory_utilization=c.gpu_memory_utilization,
                           max_model_len=c.max_model_len, enforce_eager=c.enforce_eager)
    return LlamaCppBackend(resolve_gguf(c.model), threads=c.threads, temperature=c.temperature)


class LlmProc(SyncChild):
    proc: ProcName = "llm"

    def __init__(self, cfg: Config, run: RunInfo) -> None:
        super().__init__(cfg, run)
        self.calls: CallTable[Mind] = CallTable()
        self.backend: LlmBackend | None = None
        self.cancels = 0
        self.generations = 0
        self.failures = 0
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    def setup(self) -> None:
        t0 = time.monotonic()
        self.backend = make_backend(self.cfg)
        # Warm the model and cache the system prompt's KV prefix before the first caller speaks.
        self.backend.stream([{"role": "system", "content": self.cfg.llm.system_prompt},
                             {"role": "user", "content": "Hello"}], lambda d: True, 1)
        log.info("LLM %s/%s ready in %.1f s", self.cfg.llm.backend, self.cfg.llm.model, time.monotonic() - t0)
        self._worker = threading.Thread(target=self._generate_loop, name="generate", daemon=True)
        self._worker.start()

    def handle(self, msg: AnyMsg) -> None:
        if isinstance(msg, CallStarted):
            self.calls.start(msg.slot, msg.epoch, msg.call_id, Mind(Dialogue(self.cfg.llm.system_prompt)))
        elif isinstance(msg, CallEnded):
            ended = self.calls.end(msg.slot, msg.epoch)
            if ended is not None:
                ended.state.ended = True  # stops a generation in progress at its next token
        elif isinstance(msg, Cancel):
            self.cancels += 1
            call = self.calls.find(msg.call_id)
            if call is not None:
                call.state.cancelled.add(msg.gen)
        elif isinstance(msg, Heard):
            call = self.calls.find(msg.call_id)
            if call is not None:
                with call.state.lock:
                    call.state.dialogue.heard(msg.gen, msg.text)
        elif isinstance(msg, Respond):
            call = self.calls.find(msg.call_id)
            if call is None:
                log.warning("reply %d asked for call %s, which this process does not know", msg.gen, msg.call_id)
                return
            mind = call.state
            if mind.gen and mind.gen < msg.gen:  # a newer reply supersedes one not yet done (the conductor
                mind.cancelled.add(mind.gen)     # cancels it too; this keeps the worker from starting it)
            mind.gen = max(mind.gen, msg.gen)
            with mind.lock:
                if msg.caller_text:
                    mind.dialogue.add_user(msg.caller_text)
                messages = mind.dialogue.messages()
            self._jobs.put(Job(msg.call_id, mind, msg.gen, messages, say=msg.say))

    def _generate_loop(self) -> None:
        """Worker thread: one generation at a time, sentences sent as soon as they are speakable."""
        assert self.backend is not None
        sender = Sender(Path(self.run.runtime_dir))
        try:
            while (job := self._jobs.get()) is not None:
                try:
                    self._generate(job, sender)
                except Exception:  # one bad generation must not leave every later caller unanswered
                    self.failures += 1
                    log.exception("generation %d for call %s failed", job.gen, job.call_id)
        finally:
            sender.close()

    def _generate(self, job: Job, sender: Sender) -> None:
        assert self.backend is not None
        mind, gen = job.mind, job.gen
        if gen in mind.cancelled or mind.ended:
            return
        chunker = SentenceChunker(first_min_words=self.cfg.llm.first_clause_words)
        produced: list[str] = []
        index = 0

        def trace(stage: str) -> None:
            sender.send("transport", Trace(call_id=job.call_id, gen=gen, stage=stage, at_ns=time.monotonic_ns()))

        def stopped() -> bool:  # cancelled, call over, or the process is shutting down
            return gen in mind.cancelled or mind.ended or self.stop.is_set()

        def emit(pieces: list[str], last: bool = False) -> None:
            nonlocal index
            for i, piece in enumerate(pieces):
                if stopped():
                    return
                if index == 0:
                    trace("llm_first_sentence")
                sender.send("tts", Sentence(call_id=job.call_id, gen=gen, index=index, text=piece,
                                            last=last and i == len(pieces) - 1))
                index += 1

        def on_delta(delta: str) -> bool:
            if stopped():
                return True
            if not produced:
                trace("llm_first_token")
            produced.append(delta)
            emit(chunker.push(delta))
            return stopped()

        trace("llm_start")
        if job.say:
            on_delta(job.say)
        else:
            self.generations += 1
            try:
                self.backend.stream(job.messages, on_delta, self.cfg.llm.max_tokens)
            except Exception as exc:  # LlmError, or a server dropping mid-stream: end the reply, keep the worker
                self.failures += 1
                log.error("call %s gen %d: generation failed: %s", job.call_id, gen, exc)
        if stopped():
            log.info("call %s gen %d cancelled after %d deltas", job.call_id, gen, len(produced))
            return
        tail = chunker.flush()
        if tail:
            emit(tail, last=True)
        else:
            sender.send("tts", Sentence(call_id=job.call_id, gen=gen, index=index, text="", last=True))
        with mind.lock:  # Heard and new transcripts change the dialogue on the main thread
            mind.dialogue.add_assistant(gen, "".join(produced).strip())

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.calls), "cancels": self.cancels, "generations": self.generations,
                "failures": self.failures}

    def teardown(self) -> None:
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(10)


def main(cfg_bytes: bytes, run_bytes: bytes) -> None:
    run_sync_child(LlmProc, cfg_bytes, run_bytes)
