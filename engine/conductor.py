"""The conversation of one call: a pure state machine from what happens to what to do.

The transport feeds a `Conductor` what it learns about its call (the caller started
talking, a transcript, a reply's audio spans and their marks, a keypress, a clock
tick, a process restart) and carries out the actions it returns (clear Twilio's
queue, cancel a reply, ask for one, tell the LLM what was heard, hang up). No
clock, socket or model in here: time is passed in, so every path is a unit test.

Phases:
- LISTENING: nothing to say; waiting for the caller (re-prompts when idle too long).
- THINKING: a reply `gen` was requested; none of its audio has been queued yet.
- SPEAKING: reply `gen` is being played to the caller.
- INTERRUPTED: the caller cut the reply short; waiting for what they say.
- ENDING: a last line (goodbye, time limit) is playing; the call ends when it has.
- ENDED: the caller hung up or we did.

Heard-only history: the TTS reports which ring frames carry which text (`Spoken`
spans); the transport marks the last frame of each span; Twilio echoes a mark once
that audio has played. On a barge-in the conductor reports to the LLM exactly the
spans whose audio played before the `clear`, plus the played share of the span in
progress, cut to whole words. Marks Twilio echoes after a `clear` (it echoes the
cleared ones too) are not evidence of playback and are ignored. The conductor keeps
that history too (engine.heard_history), built as the LLM builds its own, and hands
it to a restarted LLM process before anything else.
"""

from __future__ import annotations

import enum
import re

from engine.conductor_io import (
    Action,
    AudioStarted,
    CancelReply,
    Clear,
    CommitReply,
    Connected,
    DiscardReply,
    Event,
    HangUp,
    HungUp,
    KeyPressed,
    MarkPlayed,
    Note,
    PeerRestarted,
    PrepareReply,
    ReportHeard,
    RequestReply,
    RestoreHistory,
    Speak,
    Tick,
)
from engine.config import ConversationSection
from engine.heard_history import HeardHistory
from engine.reply_track import ReplyTrack, Span, heard_words
from ipc.schema import EndOfTurn, ProcName, SpeechResumed, SpeechStarted, SpeechSustained, Spoken, Transcript


class Phase(enum.Enum):
    """Where a call's conversation stands (see the module docstring)."""

    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    INTERRUPTED = "interrupted"
    ENDING = "ending"
    ENDED = "ended"


_PUNCTUATION = re.compile(r"[^\w\s']")


def same_words(a: str, b: str) -> bool:
    """Whether two transcripts say the same, ignoring case and punctuation."""
    return _PUNCTUATION.sub(" ", a.lower()).split() == _PUNCTUATION.sub(" ", b.lower()).split()


class Conductor:
    """One call's conversation. `handle(event, now, played)` returns the actions to carry out, in order.

    `now` is monotonic seconds. `played` is the ring seq of the last outbound frame the caller has heard
    by the transport's play-out clock (None if none): needed only to say what an interrupted reply got across.
    """

    def __init__(self, cfg: ConversationSection, now: float) -> None:
        self.cfg = cfg
        self.phase = Phase.LISTENING
        self.started_s = now
        self.gen = 0
        self.reply: ReplyTrack | None = None
        self.caller_speaking = False
        self.barged_this_turn = False
        self.idle_since = now
        self.reprompts = 0
        self.digits = ""
        self.digits_at = 0.0
        self.interruptions = 0
        self.backchannels = 0
        self.provisional = {"started": 0, "committed": 0, "discarded": 0}
        self.history = HeardHistory()

    # --- dispatch -------------------------------------------------------------------------
    def handle(self, event: Event, now: float, played: int | None = None) -> list[Action]:
        if self.phase is Phase.ENDED:
            return []
        if isinstance(event, HungUp):
            self.phase = Phase.ENDED
            return []  # CallEnded, which the transport sends anyway, stops every process's work for the call
        if isinstance(event, Connected):
            return self._say_via_llm(self.cfg.greeting, now) if self.cfg.greeting else []
        if isinstance(event, SpeechStarted):
            self._speech_started()
            return [PrepareReply()] if self.phase in (Phase.LISTENING, Phase.INTERRUPTED) else []
        if isinstance(event, SpeechSustained):  # the speech process decides when speech may interrupt
            return self._interrupt(played, "barge-in") if self._may_interrupt() else []
        if isinstance(event, EndOfTurn):
            self.caller_speaking = False
            self.idle_since = now
            return []
        if isinstance(event, Transcript):
            return self._caller_said(event.text, now) if event.final else self._provisional_reply(event.text, now)
        if isinstance(event, SpeechResumed):
            return self._discard_provisional("the caller went on")
        if isinstance(event, KeyPressed):
            return self._key(event.digit, now, played)
        if isinstance(event, Spoken):
            return self._span(event)
        if isinstance(event, AudioStarted):
            if self.reply is not None and event.gen == self.reply.gen and not self.reply.audio:
                self.reply.audio = True
                if self.phase is Phase.THINKING:
                    self.phase = Phase.SPEAKING
            return []
        if isinstance(event, MarkPlayed):
            return self._mark(event.seq, now)
        if isinstance(event, Tick):
            return self._tick(now, played)
        if isinstance(event, PeerRestarted):
            return self._peer_restarted(event.proc, now, played)
        raise TypeError(f"not a conductor event: {event!r}")

    # --- the caller -----------------------------------------------------------------------
    def _speech_started(self) -> None:
        self.caller_speaking = True
        self.barged_this_turn = False
        self.reprompts = 0

    def _may_interrupt(self) -> bool:
        return self.phase in (Phase.THINKING, Phase.SPEAKING) and self.reply is not None \
            and not self.reply.closing

    def _caller_said(self, text: str, now: float) -> list[Action]:
        self.caller_speaking = False
        self.idle_since = now
        text = text.strip()
        reply = self.reply
        if reply is not None and reply.provisional:
            if text and same_words(reply.caller_text, text):
                reply.provisional = False
                self.provisional["committed"] += 1
                self.history.asked(reply.caller_text)
                self.phase = Phase.THINKING  # its audio may be waiting already: AudioStarted says when it leaves
                return [CommitReply(reply.gen), Note("provisional reply committed", reply.gen)]
            actions = self._discard_provisional("the final transcript differs")
            return actions + (self._request(now, caller_text=text) if text else [])
        if not text:
            return []
        if self.phase in (Phase.THINKING, Phase.SPEAKING) and not self.barged_this_turn:
            # Said over the bot without reaching the barge-in threshold: a backchannel, not a turn.
            self.backchannels += 1
            return [Note("backchannel", self.gen, text)]
        if self.phase is Phase.ENDING:
            return [Note("ignored while ending", self.gen, text)]
        return self._request(now, caller_text=text)

    def _provisional_reply(self, text: str, now: float) -> list[Action]:
        """A transcript made at a pause: start the reply now, its audio held until the turn is over."""
        text = text.strip()
        if not (self.cfg.speculative_reply and text) or self.phase not in (Phase.LISTENING, Phase.INTERRUPTED):
            return []
        actions = self._discard_provisional("a later pause")
        self.gen += 1
        self.reply = ReplyTrack(self.gen, now, caller_text=text, provisional=True)
        self.provisional["started"] += 1
        return [*actions, RequestReply(self.gen, caller_text=text, provisional=True)]

    def _discard_provisional(self, why: str) -> list[Action]:
        reply = self.reply
        if reply is None or not reply.provisional:
            return []
        actions, _ = self._stop(reply, None)
        self.provisional["discarded"] += 1
        return [*actions, Note("provisional reply discarded", reply.gen, why)]

    def _key(self, digit: str, now: float, played: int | None) -> list[Action]:
        actions: list[Action] = []
        if self._may_interrupt():
            actions += self._interrupt(played, "keypress")
        self.reprompts = 0
        self.idle_since = now
        if digit == "#":
            return actions + self._flush_digits(now)
        self.digits += digit
        self.digits_at = now
        return actions

    def _flush_digits(self, now: float) -> list[Action]:
        digits, self.digits = self.digits, ""
        if not digits or self.phase is Phase.ENDING:
            return []
        return self._request(now, caller_text=f"[pressed on the keypad: {' '.join(digits)}]")

    # --- replies --------------------------------------------------------------------------
    def _new_reply(self, now: float, caller_text: str = "", closing: bool = False) -> ReplyTrack:
        self.gen += 1
        self.reply = ReplyTrack(self.gen, now, caller_text=caller_text, closing=closing)
        self.phase = Phase.ENDING if self.reply.closing else Phase.THINKING
        return self.reply

    def _request(self, now: float, caller_text: str) -> list[Action]:
        actions = self._abandon()
        reply = self._new_reply(now, caller_text=caller_text)
        self.history.asked(caller_text)
        return [*actions, RequestReply(reply.gen, caller_text=caller_text)]

    def _say_via_llm(self, text: str, now: float, closing: bool = False) -> list[Action]:
        actions = self._abandon()
        reply = self._new_reply(now, closing=closing)
        return [*actions, RequestReply(reply.gen, say=text)]

    def _speak(self, text: str, now: float, closing: bool = False) -> list[Action]:
        actions = self._abandon()
        reply = self._new_reply(now, closing=closing)
        reply.llm = False
        return [*actions, Speak(reply.gen, text)]

    def _abandon(self) -> list[Action]:
        """Whatever reply is in progress is superseded: stop it (the caller may be hearing it)."""
        reply = self.reply
        if reply is None or reply.done:
            return []
        return self._stop(reply, None)[0]

    def _stop(self, reply: ReplyTrack, played: int | None) -> tuple[list[Action], str]:
        """Silence and cancel `reply`, telling the LLM what of it the caller heard; the actions, and that text.
        A provisional reply was never heard: it is only cancelled and its held audio dropped."""
        self.reply = None
        if reply.provisional:
            return [CancelReply(reply.gen), DiscardReply(reply.gen)], ""
        heard = heard_words(reply, played)
        self.history.heard(reply.gen, heard)
        return [Clear(reply.gen), CancelReply(reply.gen), ReportHeard(reply.gen, heard)], heard

    def _interrupt(self, played: int | None, why: str) -> list[Action]:
        reply = self.reply
        assert reply is not None
        self.interruptions += 1
        self.barged_this_turn = True
        self.phase = Phase.INTERRUPTED
        actions, heard = self._stop(reply, played)
        prepare: list[Action] = [PrepareReply()] if self.caller_speaking else []  # after what they heard
        return [*actions, Note(why, reply.gen, heard), *prepare]

    def _span(self, event: Spoken) -> list[Action]:
        reply = self.reply
        if reply is None or event.gen != reply.gen:
            return []  # a cancelled reply's span, or a stale one from before a restart
        reply.add(Span(event.index, event.seq_first, event.seq_last, event.text, event.last))
        return []

    def _mark(self, seq: int, now: float) -> list[Action]:
        reply = self.reply
        if reply is None or seq not in reply.spans:
            return []  # a cleared reply's mark (Twilio echoes those on clear) or not ours
        span = reply.spans[seq]
        span.played = True
        if not span.last:
            return []
        reply.done = True
        self.idle_since = now
        if reply.llm:
            self.history.played(reply.gen, " ".join(s.text for s in reply.in_order() if s.text))
        if reply.closing:
            self.phase = Phase.ENDED
            return [HangUp("said goodbye")]
        self.phase = Phase.LISTENING
        return [Note("reply played", reply.gen)]

    # --- time -----------------------------------------------------------------------------
    def _tick(self, now: float, played: int | None) -> list[Action]:
        cfg = self.cfg
        if self.phase is Phase.ENDING:
            assert self.reply is not None
            if now - self.reply.requested_s >= cfg.ending_timeout_s:
                self.phase = Phase.ENDED
                return [HangUp("last line did not finish playing")]
            return []
        if now - self.started_s >= cfg.max_call_s:
            actions: list[Action] = [Note("time limit", self.gen)]
            if self._may_interrupt():
                actions += self._interrupt(played, "time limit")
            return actions + self._say_via_llm(cfg.time_limit, now, closing=True)
        if self.digits and now - self.digits_at >= cfg.dtmf_timeout_s:
            return self._flush_digits(now)
        reply = self.reply
        if self.phase is Phase.THINKING and reply is not None and now - reply.requested_s >= cfg.reply_timeout_s:
            return [Note("reply timed out", reply.gen), *self._speak(cfg.apology, now)]
        if self.phase in (Phase.LISTENING, Phase.INTERRUPTED) and not self.caller_speaking \
                and not self.digits and now - self.idle_since >= cfg.idle_reprompt_s:
            self.idle_since = now
            if self.reprompts >= cfg.max_reprompts:
                return self._say_via_llm(cfg.goodbye, now, closing=True)
            self.reprompts += 1
            return self._say_via_llm(cfg.reprompt, now)
        return []

    # --- faults ---------------------------------------------------------------------------
    def _peer_restarted(self, proc: ProcName, now: float, played: int | None) -> list[Action]:
        if proc != "llm":
            return self._work_lost(proc, now, played)
        # The new LLM knows nothing of the call: its dialogue goes first, less a turn about to be asked again.
        if self.reply is not None and self._ask_again(self.reply):
            self.history.retract(self.reply.caller_text)
        return [RestoreHistory(tuple(self.history.turns())), *self._work_lost(proc, now, played)]

    def _ask_again(self, reply: ReplyTrack) -> bool:
        """After an LLM restart, the reply is asked for again: nothing of it was heard yet, and it answers the
        caller (once only)."""
        return self.phase is Phase.THINKING and bool(reply.caller_text) and not reply.retried

    def _work_lost(self, proc: ProcName, now: float, played: int | None) -> list[Action]:
        if proc in ("llm", "tts") and self.reply is not None and self.reply.provisional:
            return self._discard_provisional(f"{proc} restarted")  # the final transcript asks again
        reply = self.reply
        busy = reply is not None and not reply.done and self.phase in (Phase.THINKING, Phase.SPEAKING,
                                                                       Phase.ENDING)
        if proc == "speech":
            if self.caller_speaking:  # their words so far died with the process
                self.caller_speaking = False
                return [Note("speech restarted mid-turn", self.gen), *self._speak(self.cfg.missed, now)]
            return []
        if not busy or reply is None:
            return []
        if reply.closing:  # a goodbye cut short: end the call rather than start over
            self.phase = Phase.ENDED
            return [HangUp(f"{proc} restarted during the last line")]
        if proc == "llm" and self._ask_again(reply):
            # Nothing heard yet: ask the restarted LLM again, once.
            actions: list[Action] = [Note("llm restarted: retrying", reply.gen)]
            actions += self._request(now, reply.caller_text)
            assert self.reply is not None
            self.reply.retried = True
            return actions
        if proc in ("llm", "tts"):
            actions, heard = self._stop(reply, played)
            note = Note(f"{proc} restarted mid-reply", reply.gen, heard)
            return [*actions, note, *self._speak(self.cfg.apology, now)]
        return []
