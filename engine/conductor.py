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
- SCREENING: a call we placed, until Twilio says who answered (engine.screening): nothing said or answered.

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

import re

from engine.conductor_io import (
    Action,
    Answered,
    AudioStarted,
    CommitReply,
    Connected,
    Event,
    HangUp,
    HungUp,
    KeyPressed,
    MarkPlayed,
    Note,
    PeerRestarted,
    PrepareReply,
    Remembered,
    RequestReply,
    RestoreHistory,
    Tick,
    Transfer,
    TransferFailed,
)
from engine.config import ConversationSection
from engine.handoff import asks_for_person
from engine.replies import Phase, Replies
from engine.reply_track import ReplyTrack, Span
from engine.screening import Screening, Verdict
from ipc.schema import EndOfTurn, ProcName, SpeechResumed, SpeechStarted, SpeechSustained, Spoken, Transcript

_PUNCTUATION = re.compile(r"[^\w\s']")


def same_words(a: str, b: str) -> bool:
    """Whether two transcripts say the same, ignoring case and punctuation."""
    return _PUNCTUATION.sub(" ", a.lower()).split() == _PUNCTUATION.sub(" ", b.lower()).split()


class Conductor(Replies):
    """One call's conversation. `handle(event, now, played)` returns the actions to carry out, in order.

    `now` is monotonic seconds. `played` is the ring seq of the last outbound frame the caller has heard
    by the transport's play-out clock (None if none): needed only to say what an interrupted reply got across.
    """

    def __init__(self, cfg: ConversationSection, now: float) -> None:
        super().__init__()
        self.cfg = cfg
        self.started_s = now
        self.caller_speaking = False
        self.barged_this_turn = False
        self.idle_since = now
        self.reprompts = 0
        self.digits = ""
        self.digits_at = 0.0
        self.interruptions = 0
        self.backchannels = 0
        self.provisional = {"started": 0, "committed": 0, "discarded": 0}
        self.transferring = False
        self.screening: Screening | None = None

    # --- dispatch -------------------------------------------------------------------------
    def handle(self, event: Event, now: float, played: int | None = None) -> list[Action]:
        if isinstance(event, TransferFailed):  # the call ended as far as the bot knew: it goes on after all
            return self._transfer_failed(event.why, now)
        if self.phase is Phase.ENDED:
            return []
        if isinstance(event, HungUp):
            self.phase, self.transferring = Phase.ENDED, False
            return []  # CallEnded, which the transport sends anyway, stops every process's work for the call
        if isinstance(event, Remembered):  # before the call begins: the dialogue it goes on from
            self.history.restore(event.turns)
            return [RestoreHistory(tuple(self.history.turns())), Note("remembered", 0, f"{len(event.turns)} turns")]
        if self.phase is Phase.SCREENING:  # only who answered, or the time, moves it on
            return self._screened(event, now) if isinstance(event, Answered | Tick) else []
        if isinstance(event, Answered):  # before `Connected` (which brings it again), or late, or twice: no change
            return [Note(f"answered by {event.by}: too late to matter", self.gen)] if self.screening else []
        if isinstance(event, Connected):
            if event.screen:
                self.phase, self.screening = Phase.SCREENING, Screening(self.cfg, now)
                return self._screened(Answered(event.answered), now) if event.answered else []
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
            return self._caller_said(event.text, now, played) if event.final \
                else self._provisional_reply(event.text, now)
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

    def _screened(self, event: Answered | Tick, now: float) -> list[Action]:
        """A call we placed, on an answering-machine detection result or a tick: start it as the verdict says."""
        assert self.screening is not None
        verdict, why = self.screening.judge(event.by if isinstance(event, Answered) else None, now)
        if verdict is Verdict.WAIT:
            return []
        self.phase, self.idle_since = Phase.LISTENING, now
        if verdict is Verdict.VOICEMAIL:
            return [Note(why, self.gen), *self._speak(self.cfg.voicemail_message, now, closing=True)]
        if verdict is Verdict.HANG_UP:
            self.phase = Phase.ENDED
            return [Note(why, self.gen), HangUp(why)]
        return [Note(why, self.gen), *(self._say_via_llm(self.cfg.greeting, now) if self.cfg.greeting else [])]

    # --- the caller -----------------------------------------------------------------------
    def _speech_started(self) -> None:
        self.caller_speaking = True
        self.barged_this_turn = False
        self.reprompts = 0

    def _may_interrupt(self) -> bool:
        return self.phase in (Phase.THINKING, Phase.SPEAKING) and self.reply is not None \
            and not self.reply.closing

    def _caller_said(self, text: str, now: float, played: int | None) -> list[Action]:
        self.caller_speaking = False
        self.idle_since = now
        text = text.strip()
        if self.phase is not Phase.ENDING and (phrase := asks_for_person(text, self.cfg.transfer_phrases)):
            return [*self._discard_provisional("the caller asked for a person"),
                    *self._hand_off(now, played, f'said "{phrase}"')]
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
        if not (self.cfg.speculative_reply and text) or self.phase not in (Phase.LISTENING, Phase.INTERRUPTED) \
                or asks_for_person(text, self.cfg.transfer_phrases):
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
        if digits == self.cfg.transfer_digit:  # the key alone (then '#' or a pause), not a number that starts with it
            return self._hand_off(now, None, f"pressed {digits}")
        return self._request(now, caller_text=f"[pressed on the keypad: {' '.join(digits)}]")

    # --- replies --------------------------------------------------------------------------
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
        reply.add(Span(event.index, event.seq_first, event.seq_last, event.text, event.last,
                       words_ms=tuple((start, end) for start, end in event.words_ms)))
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
            return [Transfer(self.cfg.transfer_to)] if self.transferring else [HangUp("said goodbye")]
        self.phase = Phase.LISTENING
        return [Note("reply played", reply.gen)]

    # --- time -----------------------------------------------------------------------------
    def _tick(self, now: float, played: int | None) -> list[Action]:
        cfg = self.cfg
        if self.phase is Phase.ENDING:
            assert self.reply is not None
            if now - self.reply.requested_s >= cfg.ending_timeout_s:
                self.phase = Phase.ENDED
                late = "last line did not finish playing"
                return [Transfer(cfg.transfer_to)] if self.transferring else [HangUp(late)]
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

    # --- hand-off to a person (engine.handoff) ----------------------------------------------
    def _hand_off(self, now: float, played: int | None, asked: str) -> list[Action]:
        """The caller asked for a person: stop talking; say the transfer line, then put them through."""
        actions = self._interrupt(played, "asked for a person") if self._may_interrupt() else self._abandon()
        if not self.cfg.transfer_to:
            return [*actions, Note("transfer asked for, none set", self.gen, asked),
                    *self._speak(self.cfg.transfer_unavailable, now)]
        self.transferring = True
        return [*actions, Note("transfer", self.gen, asked), *self._speak(self.cfg.transfer_line, now, closing=True)]

    def _transfer_failed(self, why: str, now: float) -> list[Action]:
        if not self.transferring:
            return []
        self.transferring = False
        self.phase = Phase.LISTENING
        return [Note("transfer failed", self.gen, why), *self._speak(self.cfg.transfer_failed, now)]

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
