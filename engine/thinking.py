"""The LLM process's logic, with no sockets or threads: messages in, replies to make; text deltas in, sentences out.

`Thinking` keeps one `Mind` per call: its dialogue (only what the caller heard) and
which of its replies are void. It takes the bus messages addressed to the LLM and
answers a `ReplyJob` when a reply is to be made. `Reply` makes one: it is fed the
model's text deltas (or a line to say verbatim) and returns what to send on, in
order: `Sentence`s for the TTS the moment each piece is speakable, and the trace
`Stage`s it passed. `generate` drives a `Reply` from any `LlmBackend`; the process
runs it on a worker thread, tests run it with a scripted backend. A restarted process
learns each call's dialogue back from the transport (`History`, engine.heard_history).

Cancellation is checked between deltas: once a reply is cancelled, its call ends or
the process stops, nothing more of it is returned and the dialogue keeps only what
the caller heard of it (reported later by `Heard`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from engine.calls import CallTable, EarlyMessages
from engine.chunker import SentenceChunker, loop_start
from engine.dialogue import Dialogue, Turn
from engine.first_pieces import FirstPieces, Yielder
from engine.llm import LlmBackend, Messages
from engine.speakable import speakable
from ipc.schema import CallEnded, CallStarted, Cancel, Commit, Heard, History, HistoryTurn, Prepare, Respond, Sentence


@dataclass(frozen=True)
class Stage:
    """A trace stage a reply reached just now (see engine.trace)."""

    name: str


Out = Sentence | Stage
CallMsg = Cancel | Heard | Respond | Commit | Prepare | History
"""The messages about one call that the LLM process takes."""
Outcome = Literal["done", "stopped", "failed"]


@dataclass
class Provisional:
    """A reply made before its turn was over: what it answers, and what it said once made; kept out of the
    dialogue until committed."""

    caller_text: str
    reply: str | None = None


@dataclass
class Mind:
    """One call's state in the LLM process. The worker thread writes the reply it made into the dialogue while
    the main thread adds what the caller said and heard: `lock` orders them."""

    dialogue: Dialogue
    latest: int = 0
    cancelled: set[int] = field(default_factory=set)
    ended: bool = False
    provisional: dict[int, Provisional] = field(default_factory=dict)
    slot: int = 0  # whose context (and worker) the call's replies use
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write_reply(self, gen: int, text: str) -> None:
        """Reply `gen` is made: into the dialogue, or kept aside while it is provisional."""
        with self.lock:
            pending = self.provisional.get(gen)
            if pending is not None:
                pending.reply = text
            else:
                self.dialogue.add_assistant(gen, text)

    def commit(self, gen: int) -> None:
        """Provisional reply `gen` is the answer: the caller's words, and the reply if it is made, join the
        dialogue (a reply still being made joins it when done)."""
        with self.lock:
            pending = self.provisional.pop(gen, None)
            if pending is None:
                return
            self.dialogue.add_user(pending.caller_text)
            if pending.reply is not None:
                self.dialogue.add_assistant(gen, pending.reply)

    def restore(self, turns: list[HistoryTurn]) -> None:
        """The dialogue a previous incarnation of this process had (the transport kept it): it replaces this one."""
        with self.lock:
            kept = [Turn(t.role, t.text, t.gen, t.interrupted) for t in turns]
            self.dialogue.turns = kept[-self.dialogue.max_turns:]

    def cancel(self, gen: int) -> None:
        with self.lock:
            self.cancelled.add(gen)
            self.provisional.pop(gen, None)  # nothing of a dropped provisional reply is kept


@dataclass
class ReplyJob:
    """Reply `gen` of a call to make: generated from `messages`, or `say` spoken verbatim; or, with `prepare`,
    only `messages` read into the model's context ahead of the reply that will follow them."""

    call_id: str
    gen: int
    mind: Mind
    messages: Messages
    say: str = ""
    prepare: bool = False

    @property
    def slot(self) -> int:
        return self.mind.slot

    def prepare_void(self) -> bool:
        """A context warm-up made pointless: a reply was asked for since, or the call is over."""
        return self.mind.latest != self.gen or self.mind.ended


class Thinking:
    """Every call's mind in the LLM process; `handle` a message, get the reply job it asks for, if any."""

    def __init__(self, system_prompt: str, slots: int = 1, solo_slot: int | None = None) -> None:
        """`slots` contexts that live calls share; `solo_slot`, if any, is for a call that begins alone."""
        self.system_prompt = system_prompt
        self.slots = slots
        self.solo_slot = solo_slot
        self.calls: CallTable[Mind] = CallTable()
        self.cancels = 0
        self._early: EarlyMessages[CallMsg] = EarlyMessages()

    def handle(self, msg: CallStarted | CallEnded | CallMsg) -> list[ReplyJob]:
        """The reply jobs `msg` asks for, in order (several when a call's `CallStarted` releases messages that came
        before it)."""
        if isinstance(msg, CallStarted):
            mind = Mind(Dialogue(self.system_prompt), slot=self._free_slot(msg.live))
            self.calls.start(msg.slot, msg.epoch, msg.call_id, mind)
            return [job for early in self._early.release(msg.call_id) for job in self.handle(early)]
        if isinstance(msg, CallEnded):
            ended = self.calls.end(msg.slot, msg.epoch)
            if ended is not None:
                ended.state.ended = True  # stops a generation in progress at its next delta
            return []
        call = self.calls.find(msg.call_id)
        if call is None:
            # After a restart of this process the supervisor replays each call's CallStarted while the transport
            # sends its History and goes on with the call: another sender, so they may come first.
            self._early.hold(msg.call_id, msg)
            return []
        mind = call.state
        if isinstance(msg, Cancel):
            self.cancels += 1
            mind.cancel(msg.gen)
        elif isinstance(msg, Commit):
            mind.commit(msg.gen)
        elif isinstance(msg, Prepare):
            with mind.lock:
                messages = mind.dialogue.messages(then_user="")  # up to where the caller's words will go
            return [ReplyJob(msg.call_id, mind.latest, mind, messages, prepare=True)]
        elif isinstance(msg, History):  # after a restart of this process: the transport's from before it
            mind.restore(msg.turns)
        elif isinstance(msg, Heard):
            with mind.lock:
                mind.dialogue.heard(msg.gen, msg.text)
        else:
            return [self._respond(mind, msg)]
        return []

    @property
    def contexts(self) -> int:
        """How many slots there are, the solo one included: a worker each."""
        return self.slots + (self.solo_slot is not None)

    def _free_slot(self, live: int) -> int:
        """The solo slot for a call that begins with no other live (`live`: the transport's count, which a restarted
        process's replayed calls also carry); else the shared slot fewest live calls use (a call keeps its slot while
        it lasts; past `slots` calls, they share)."""
        if self.solo_slot is not None and live <= 1 and not self.calls:
            return self.solo_slot
        used = [0] * self.slots
        for call in self.calls.values():
            if call.state.slot < self.slots:
                used[call.state.slot] += 1
        return used.index(min(used))

    def _respond(self, mind: Mind, msg: Respond) -> ReplyJob:
        if mind.latest and mind.latest < msg.gen:  # a newer reply supersedes one not yet done (the conductor
            mind.cancelled.add(mind.latest)          # cancels it too; this keeps the worker from starting it)
        mind.latest = max(mind.latest, msg.gen)
        with mind.lock:
            if msg.provisional:
                mind.provisional[msg.gen] = Provisional(msg.caller_text)
                messages = mind.dialogue.messages(then_user=msg.caller_text)
            else:
                if msg.caller_text:
                    mind.dialogue.add_user(msg.caller_text)
                messages = mind.dialogue.messages()
        return ReplyJob(msg.call_id, msg.gen, mind, messages, say=msg.say)


class Reply:
    """One reply in the making: deltas in, `Sentence`s and `Stage`s out, in the order to send them."""

    def __init__(self, job: ReplyJob, *, first_clause_words: int = 4, max_sentences: int = 0,
                 shutting_down: Callable[[], bool] = lambda: False) -> None:
        self.job = job
        self._chunker = SentenceChunker(first_min_words=first_clause_words)
        self._shutting_down = shutting_down
        self._produced: list[str] = []
        self._index = 0
        self._max_sentences = 0 if job.say else max_sentences  # a line to say verbatim is said whole
        self._sentence_ends = 0
        self._said: list[str] = []  # the pieces sent to be spoken
        self.enough = False
        """It has said `max_sentences` sentences, or begun to repeat itself: the model should stop, and what it
        makes after is dropped."""
        self.repeated = False
        """It was cut where the model began to say one phrase over and over (`engine.chunker.loop_start`)."""
        self.error: Exception | None = None
        """What made the backend fail mid-reply, if it did."""

    def stopped(self) -> bool:
        """Cancelled, its call over, or the process is shutting down: nothing more of it goes out."""
        mind = self.job.mind
        return self.job.gen in mind.cancelled or mind.ended or self._shutting_down()

    def start(self) -> list[Out]:
        return [Stage("llm_start")]

    def feed(self, delta: str) -> list[Out]:
        """A piece of the reply's text as the model made it."""
        if self.stopped() or self.enough:
            return []
        out: list[Out] = [] if self._produced else [Stage("llm_first_token")]
        self._produced.append(delta)
        if self.job.say or (cut := loop_start(text := self.text)) is None:  # a line to say is said whole
            return out + self._sentences(self._chunker.push(delta))
        # The model repeats itself: the reply ends where the repeating began (what was spoken of it stays said).
        before = len(text) - len(delta)
        self._chunker.drop_last(before - cut)
        out += self._sentences(self._chunker.push(delta[:max(0, cut - before)]) + self._chunker.flush())
        self.enough = self.repeated = True
        return out

    def finish(self, cut_off: bool = False) -> list[Out]:
        """The model is done: the rest of the text as the last sentence (an empty one if nothing is left, so the
        TTS still learns the reply is over), and the reply joins the dialogue. Nothing if it was stopped.

        `cut_off`: the model was stopped by `max_tokens`. An unfinished sentence after a finished one is then
        dropped, so the reply ends on a whole sentence rather than mid-phrase; with none finished, it is said."""
        if self.stopped():
            return []
        rest = [] if self.enough else self._chunker.flush()
        if cut_off and self._sentence_ends and rest and not _ends_sentence(rest[-1]):
            rest.pop()
        out = self._sentences(rest, last=True)
        if not any(isinstance(o, Sentence) and o.last for o in out):
            out.append(self._sentence("", last=True))
        self.job.mind.write_reply(self.job.gen, " ".join(self._said))  # what the voice says, not what the model wrote
        return out

    @property
    def deltas(self) -> int:
        return len(self._produced)

    @property
    def text(self) -> str:
        """What the model has written of the reply so far (a continuation goes on from it)."""
        return "".join(self._produced)

    @property
    def first_piece_out(self) -> bool:
        return self._index > 0

    def _sentences(self, pieces: list[str], last: bool = False) -> list[Out]:
        out: list[Out] = []
        for i, written in enumerate(pieces):
            if self.enough:
                break
            piece = speakable(written)  # no stage directions, markdown or emojis; numbers as a person says them
            if not piece:
                continue
            if self._index == 0:
                out.append(Stage("llm_first_sentence"))
            out.append(self._sentence(piece, last=last and i == len(pieces) - 1))
            self._said.append(piece)
            if _ends_sentence(piece):
                self._sentence_ends += 1
                self.enough = bool(self._max_sentences) and self._sentence_ends >= self._max_sentences
        return out

    def _sentence(self, text: str, last: bool) -> Sentence:
        sentence = Sentence(call_id=self.job.call_id, gen=self.job.gen, index=self._index, text=text, last=last,
                            fixed=bool(self.job.say))
        self._index += 1
        return sentence


def generate(reply: Reply, backend: LlmBackend, max_tokens: int, emit: Callable[[Out], None],
             first_pieces: FirstPieces | None = None) -> Outcome:
    """Make `reply` with `backend` (or say its line verbatim), handing each output to `emit` as it comes.

    With `first_pieces`, the reply counts as making its first piece until that is out; after it, the reply stops
    whenever another begins, waits for that one's first piece, and continues from its own text (engine.first_pieces).
    A backend that fails mid-stream ends the reply with what it had made: the caller hears that much rather than
    silence (the exception is kept in `reply.error`). Blocks: run it on a worker thread.
    """
    if reply.stopped():
        return "stopped"
    yielder = Yielder(None if reply.job.say else first_pieces)

    def on_delta(delta: str) -> bool:
        for out in reply.feed(delta):
            emit(out)
        gave_way = yielder.after_delta(reply.first_piece_out)
        return reply.stopped() or reply.enough or gave_way

    for out in reply.start():
        emit(out)
    if reply.job.say:
        on_delta(reply.job.say)
    else:
        _stream(reply, backend, max_tokens, on_delta, yielder)
    if reply.stopped():
        return "stopped"
    for out in reply.finish(cut_off=reply.deltas >= max_tokens):
        emit(out)
    return "failed" if reply.error is not None else "done"


def _ends_sentence(piece: str) -> bool:
    return piece.rstrip("\"')]").endswith((".", "!", "?", "…"))


def _stream(reply: Reply, backend: LlmBackend, max_tokens: int, on_delta: Callable[[str], bool],
            yielder: Yielder) -> None:
    """The model's reply, in one request and one more each time it gave way; a failure is kept in `reply.error`."""
    messages = reply.job.messages
    try:
        while True:
            yielder.gave_way = False
            backend.stream(messages, on_delta, max_tokens - reply.deltas, reply.job.slot)
            if not yielder.gave_way or reply.stopped() or reply.enough or reply.deltas >= max_tokens:
                break
            yielder.wait(reply.stopped)
            if reply.stopped():
                break
            messages = [*reply.job.messages, {"role": "assistant", "content": reply.text}]
    except Exception as exc:  # LlmError, or a server dropping mid-stream
        reply.error = exc
        if messages is not reply.job.messages:
            yielder.refused(exc)
    finally:
        yielder.close()
