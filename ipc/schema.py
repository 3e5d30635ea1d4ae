"""Every message that crosses a process boundary on the control bus.

msgspec Structs in one tagged union, encoded as MessagePack: no pickle. Each message
carries `t_ns` (time.monotonic_ns(), one clock for every process on a host) and,
where it concerns a call, `call_id`.

Order: messages from one sender to one receiver arrive in the order they were sent
(a call's start, what the caller heard of a reply and the next reply request, a
call's end). Only `Cancel` and `Shutdown` set `urgent = True`: they travel on the
receiver's priority socket and overtake whatever is queued, so a receiver must
accept a `Cancel` for a reply (or call) it has not heard of yet.
"""

from __future__ import annotations

import time
from typing import ClassVar, Literal, get_args

import msgspec

ProcName = Literal["transport", "speech", "llm", "tts"]
"""The engine's child processes: the one list of their names."""
PROC_NAMES: tuple[ProcName, ...] = get_args(ProcName)
MODEL_PROCS: tuple[ProcName, ...] = tuple(name for name in PROC_NAMES if name != "transport")
"""The processes that serve calls with a model: each is told when a call starts and ends."""


def now_ns() -> int:
    return time.monotonic_ns()


class Msg(msgspec.Struct, tag=True, kw_only=True):
    """Base of all bus messages."""

    urgent: ClassVar[bool] = False
    t_ns: int = msgspec.field(default_factory=now_ns)


# --- lifecycle -----------------------------------------------------------------

class Ready(Msg):
    """A child finished start-up (rings and bus attached, models loaded)."""

    proc: ProcName
    pid: int
    incarnation: int


class Heartbeat(Msg):
    """Child -> supervisor, every heartbeat interval: alive, with the process's own counters."""

    proc: ProcName
    pid: int
    incarnation: int
    stats: dict[str, int] = {}


class Shutdown(Msg):
    """Supervisor -> child: stop. With `drain`, finish what is in flight first."""

    urgent: ClassVar[bool] = True
    reason: str
    drain: bool = True


ChildStateName = Literal["starting", "ready", "backoff", "stopping", "stopped", "failed"]


class ProcState(msgspec.Struct, kw_only=True):
    """One child process as the supervisor reports it in `Status`."""

    name: ProcName
    state: ChildStateName
    pid: int | None
    incarnation: int
    restarts: int
    last_exit: str | None
    started_t_ns: int
    """When the current incarnation was spawned (monotonic ns, comparable across processes)."""
    ready_t_ns: int | None
    """When the current incarnation became ready (monotonic ns, comparable across processes)."""
    uptime_s: float
    heartbeat_age_s: float | None
    stats: dict[str, int] = {}
    """The process's own counters from its last heartbeat (calls, frames, cancels...)."""


class Status(Msg):
    """Supervisor -> transport, periodically: the engine's health, for /health."""

    procs: list[ProcState]
    pool: str
    max_calls: int


# --- calls ----------------------------------------------------------------------

class CallStarted(Msg):
    """Transport -> speech, llm, tts: a call leased ring pair `slot` under `epoch`.

    The supervisor replays it for every live call to a restarted process.
    """

    call_id: str
    slot: int
    epoch: int
    inbound_rate: int
    live: int = 1
    """Calls live on the engine as it was sent, this one included (a replay comes with every live call's)."""


class CallEnded(Msg):
    """Transport (or the supervisor, for a dead transport) -> speech, llm, tts: the call on `slot`/`epoch` is
    over; its work stops."""

    call_id: str
    slot: int
    epoch: int
    reason: str


class Cancel(Msg):
    """Stop generation `gen` of a call at once (barge-in, hang-up)."""

    urgent: ClassVar[bool] = True
    call_id: str
    gen: int


# --- speech ---------------------------------------------------------------------

class SpeechStarted(Msg):
    """Speech -> transport: the caller started talking (speech.min_speech_ms of it): a new turn."""

    call_id: str
    turn: int
    onset_t_ns: int
    """When the speech began, on the caller's audio clock (arrival time of that audio)."""


class SpeechSustained(Msg):
    """Speech -> transport: the caller has talked for conversation.barge_in_min_speech_ms without stopping:
    long enough to interrupt the bot. Once a turn; with that minimum no longer than speech.min_speech_ms,
    right behind the turn's SpeechStarted."""

    call_id: str
    turn: int


class EndOfTurn(Msg):
    """Speech -> transport: the caller has been silent for the end-of-turn time."""

    call_id: str
    turn: int
    speech_end_t_ns: int
    """When the caller stopped talking (arrival time of the last speech audio)."""


class Transcript(Msg):
    """Speech -> transport: what the caller said in a turn (the conductor decides what it means).

    `final` once the turn is over. Before that, at the first pause long enough to start transcribing, a
    provisional one (`final=False`, `speculative=True`) as soon as it is ready: the conductor may start the
    reply on it, and a `SpeechResumed` voids it if the caller goes on."""

    call_id: str
    turn: int
    text: str
    final: bool
    speech_end_t_ns: int
    audio_ms: int
    stt_ms: int
    speculative: bool = False
    """True when transcription began during the silence, before the turn was confirmed over."""
    stt_start_t_ns: int = 0
    """When Whisper began on this utterance (monotonic ns; 0: not known): from `speech_end_t_ns` to here is the
    pause and the wait for the worker, from here to the transcript the model's own time."""


class SpeechResumed(Msg):
    """Speech -> transport: the caller went on talking after a pause whose provisional `Transcript` was sent:
    that transcript, and whatever was started on it, is void."""

    call_id: str
    turn: int


# --- thinking and speaking ----------------------------------------------------------

class Respond(Msg):
    """Transport -> llm: produce reply `gen` of a call, to `caller_text` (added to the dialogue as the caller's),
    or, with `say`, speak `say` verbatim (a greeting, a re-prompt: kept in the dialogue as the assistant's).

    It comes after the `Heard` of the reply it follows: the dialogue it is built on holds what the caller heard.

    A `provisional` reply answers a turn that may not be over (a transcript made at a pause): it is made as any
    other, but the transport holds its audio, and neither the caller's words nor the reply join the dialogue
    until `Commit`; a `Cancel` drops it without a trace."""

    call_id: str
    gen: int
    caller_text: str = ""
    say: str = ""
    provisional: bool = False


class Prepare(Msg):
    """Transport -> llm: the caller started a turn the bot will answer: read the call's dialogue so far into the
    model's context now, so the reply has only the caller's new words left to read."""

    call_id: str


class Commit(Msg):
    """Transport -> llm: provisional reply `gen` is the answer after all (the turn ended as transcribed): the
    caller's words and the reply join the dialogue."""

    call_id: str
    gen: int


class Sentence(Msg):
    """LLM (or the transport, for a line said without the LLM) -> tts: the next speakable piece of reply `gen`;
    `last` marks the end of the reply."""

    call_id: str
    gen: int
    index: int
    text: str
    last: bool = False
    fixed: bool = False  # of a line said verbatim (a greeting, a re-prompt): the same on every call, so kept


class Heard(Msg):
    """Transport -> llm: of reply `gen`, the caller heard only `text` before a barge-in."""

    call_id: str
    gen: int
    text: str


class HistoryTurn(msgspec.Struct, kw_only=True):
    """One turn of a call's dialogue in `History`: the caller's words, or what the caller heard of reply `gen`."""

    role: Literal["user", "assistant"]
    text: str
    gen: int | None = None
    interrupted: bool = False
    """The caller cut this reply short: `text` is the part they heard."""


class History(Msg):
    """Transport -> llm, after the llm process restarted: a call's dialogue as the dead process had it (the caller's
    words and what they heard, from engine.heard_history), to go on from. It replaces the dialogue the new process
    has for the call, and comes before any reply asked for since the transport saw the restart."""

    call_id: str
    turns: list[HistoryTurn]


class Spoken(Msg):
    """TTS -> transport: frames seq_first..seq_last of the outbound ring carry `text` of reply `gen`."""

    call_id: str
    gen: int
    index: int
    seq_first: int
    seq_last: int
    text: str
    last: bool = False
    words_ms: list[tuple[int, int]] = []
    """Where each word of `text` starts and ends, ms from the span's first frame, when the voice knows (streaming
    Piper's durations); empty when it does not: then a word's time is reckoned from its letters."""


AnyMsg = (Ready | Heartbeat | Shutdown | Status | CallStarted | CallEnded | Cancel | SpeechStarted | SpeechSustained
          | EndOfTurn | Transcript | SpeechResumed | Respond | Prepare | Commit | Sentence | Heard | History | Spoken)


class Codec:
    """One encoder and one decoder per process (msgspec reuses their buffers)."""

    def __init__(self) -> None:
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(AnyMsg)

    def encode(self, msg: Msg) -> bytes:
        return self._enc.encode(msg)

    def decode(self, data: bytes) -> AnyMsg:
        msg: AnyMsg = self._dec.decode(data)
        return msg


class RunInfo(msgspec.Struct, kw_only=True):
    """What a child is told at spawn about the run it belongs to (passed as bytes, not pickled)."""

    proc: ProcName
    incarnation: int
    supervisor_pid: int
    pool_name: str
    runtime_dir: str

    def to_bytes(self) -> bytes:
        return msgspec.msgpack.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> RunInfo:
        return msgspec.msgpack.decode(data, type=cls)
