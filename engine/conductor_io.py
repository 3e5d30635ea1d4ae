"""What a call's `Conductor` is told and what it answers: its events and its actions, plain data.

Events the speech and TTS processes send about a call arrive as their bus messages
(`SpeechStarted`, `SpeechSustained`, `EndOfTurn`, `Transcript`, `Spoken`) and are fed
to the conductor as they are; the rest are the call's own (its stream, its keypad,
its marks, the clock, restarts). Actions are what the transport carries out.
"""

from __future__ import annotations

from dataclasses import dataclass

from ipc.schema import (
    EndOfTurn,
    HistoryTurn,
    ProcName,
    SpeechResumed,
    SpeechStarted,
    SpeechSustained,
    Spoken,
    Transcript,
)

# --- events ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Connected:
    """The call's media stream started. A `screen`ed call (one we placed) says nothing until it is `Answered`;
    `answered` is an answering-machine detection result that came before this did ("" if none)."""

    screen: bool = False
    answered: str = ""


@dataclass(frozen=True)
class Answered:
    """Twilio's answering-machine detection says who picked up a call we placed: its `AnsweredBy`
    (engine.screening)."""

    by: str


@dataclass(frozen=True)
class Remembered:
    """What this caller's earlier calls left in the engine's memory (engine.memory), before the call begins."""

    turns: tuple[HistoryTurn, ...]


@dataclass(frozen=True)
class TransferFailed:
    """Twilio would not put the call through to a person (`Transfer`): the call goes on with the bot."""

    why: str


@dataclass(frozen=True)
class KeyPressed:
    """The caller pressed a key on the keypad (DTMF)."""

    digit: str


@dataclass(frozen=True)
class AudioStarted:
    """The first audio frame of reply `gen` left for the caller."""

    gen: int


@dataclass(frozen=True)
class MarkPlayed:
    """Twilio echoed mark `seq`: the frame with that ring seq has played."""

    seq: int


@dataclass(frozen=True)
class Tick:
    """Time passes: timeouts, re-prompts and the call's time limit are checked."""


@dataclass(frozen=True)
class PeerRestarted:
    """Process `proc` came back as a new incarnation: its work in flight for this call is lost."""

    proc: ProcName


@dataclass(frozen=True)
class HungUp:
    """The call is over (the caller hung up, or the socket is gone)."""


Event = (Connected | Answered | Remembered | TransferFailed | KeyPressed | AudioStarted | MarkPlayed | Tick
         | PeerRestarted | HungUp | SpeechStarted | SpeechSustained | EndOfTurn | Transcript | SpeechResumed | Spoken)
"""What a conductor is fed: the call's own events, and the speech and TTS processes' messages about it."""


# --- actions --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Clear:
    """Silence the caller: Twilio's queue, our send queue, and this reply's frames still in the ring."""

    gen: int


@dataclass(frozen=True)
class CancelReply:
    """Stop generating and speaking reply `gen` (LLM and TTS)."""

    gen: int


@dataclass(frozen=True)
class RequestReply:
    """Ask the LLM for reply `gen`: to `caller_text`, or, with `say`, to speak `say` verbatim (kept in its history).

    A `provisional` reply answers a turn that may not be over: its audio is held until `CommitReply`."""

    gen: int
    caller_text: str = ""
    say: str = ""
    provisional: bool = False


@dataclass(frozen=True)
class PrepareReply:
    """The caller has started a turn the bot will answer: the LLM may read the dialogue so far into its context
    now, so the reply only has the caller's new words left to read."""


@dataclass(frozen=True)
class CommitReply:
    """Provisional reply `gen` is the answer: play its audio (held so far), and let it join the dialogue."""

    gen: int


@dataclass(frozen=True)
class DiscardReply:
    """Provisional reply `gen` is void: drop its held audio. It was never heard, so Twilio is not cleared."""

    gen: int


@dataclass(frozen=True)
class Speak:
    """Have the TTS say `text` as reply `gen` without the LLM (it may be the part that failed)."""

    gen: int
    text: str


@dataclass(frozen=True)
class ReportHeard:
    """Of reply `gen`, the caller heard only `text`."""

    gen: int
    text: str


@dataclass(frozen=True)
class RestoreHistory:
    """The LLM restarted knowing nothing of the call: give it the call's dialogue so far (before any new reply)."""

    turns: tuple[HistoryTurn, ...]


@dataclass(frozen=True)
class HangUp:
    """End the call: close its stream, saying why."""

    reason: str


@dataclass(frozen=True)
class Transfer:
    """Put the live call through to a person at `to` (Twilio's REST API, `<Dial>`): the bot's part is over."""

    to: str


@dataclass(frozen=True)
class Note:
    """Something worth a log line and a trace event: `what` happened to reply `gen`."""

    what: str
    gen: int
    detail: str = ""


Action = (Clear | CancelReply | RequestReply | PrepareReply | CommitReply | DiscardReply | Speak | ReportHeard
          | RestoreHistory | HangUp | Transfer | Note)
