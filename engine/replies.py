"""Starting and stopping one call's replies, and keeping what the caller heard of them: the conductor's base.

A reply is asked for (`_request`: the LLM answers the caller; `_say_via_llm`: the
LLM says a line, so it joins its dialogue; `_speak`: a line straight to the TTS) as
a new generation `gen`, which supersedes whatever reply was in progress: that one is
stopped (`_stop`), and the LLM is told what of it the caller heard (engine.reply_track).
`Replies` holds the call's phase, its latest reply and its heard-only history;
the `Conductor` (engine.conductor) decides when each happens.
"""

from __future__ import annotations

import enum

from engine.conductor_io import Action, CancelReply, Clear, DiscardReply, ReportHeard, RequestReply, Speak
from engine.heard_history import HeardHistory
from engine.reply_track import ReplyTrack, heard_words


class Phase(enum.Enum):
    """Where a call's conversation stands (see the module docstring)."""

    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    INTERRUPTED = "interrupted"
    ENDING = "ending"
    ENDED = "ended"
    SCREENING = "screening"


class Replies:
    """The phase of a call, its latest reply, and what the caller heard: the reply bookkeeping of a `Conductor`."""

    def __init__(self) -> None:
        self.phase = Phase.LISTENING
        self.gen = 0
        self.reply: ReplyTrack | None = None
        self.history = HeardHistory()

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
