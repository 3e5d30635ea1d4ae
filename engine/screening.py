"""Who answered a call we placed, a person or a machine, as Twilio's answering-machine detection (AMD) says.

`python -m engine call` asks Twilio for asynchronous AMD with `DetectMessageEnd`: the call connects at
once, and Twilio posts `AnsweredBy` to our AMD callback when it knows, for a machine once its greeting
has ended (the beep). Until then the conductor says nothing and answers nothing (`Screening`); the
result decides how the call starts. `PendingAnswers` keeps each result for a call whose conversation
has not begun yet. Pure: time is passed in.
"""

from __future__ import annotations

import enum

from engine.config import ConversationSection

PERSON = frozenset({"human", "unknown"})
"""Greeted and talked with as usual: `unknown` is what Twilio says when it cannot tell."""
MACHINE = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other"})
"""An answering machine whose greeting has ended: the time to leave the message."""
STILL_LISTENING = frozenset({"machine_start"})
"""A machine, its greeting not over (Twilio sends this only without DetectMessageEnd): wait for the end."""
ANSWERED_BY = PERSON | MACHINE | STILL_LISTENING | {"fax"}
"""Every `AnsweredBy` Twilio sends; anything else is refused."""
MARGIN_S = 5.0
"""Beyond Twilio's own timeout, allowing for its callback's trip here, before the call goes on without it."""


class Verdict(enum.Enum):
    """What the conductor does with a screened call now."""

    WAIT = "wait"  # say nothing yet
    GREET = "greet"  # a person (or nobody can tell): the usual greeting and conversation
    VOICEMAIL = "voicemail"  # speak the voicemail message, then hang up
    HANG_UP = "hang up"  # a fax, or a machine and no message to leave


class Screening:
    """One outbound call waiting to learn who answered: `judge` each AMD result and each tick, once decided, done.

    With no result within Twilio's `machine_detection_timeout_s` (plus `MARGIN_S`) of the call connecting, it goes
    on as with a person. A result after the decision changes nothing (the conductor no longer asks)."""

    def __init__(self, cfg: ConversationSection, now: float) -> None:
        self.voicemail = cfg.voicemail_message
        self.deadline_s = now + cfg.machine_detection_timeout_s + MARGIN_S

    def judge(self, answered_by: str | None, now: float) -> tuple[Verdict, str]:
        """The verdict on an AMD result (`answered_by`), or on the time alone (None); and why, for the log."""
        if answered_by in PERSON:
            return Verdict.GREET, f"answered by {answered_by}"
        if answered_by in MACHINE:
            if self.voicemail:
                return Verdict.VOICEMAIL, f"answered by {answered_by}: leaving the voicemail message"
            return Verdict.HANG_UP, f"answered by {answered_by}: no voicemail message to leave"
        if answered_by == "fax":
            return Verdict.HANG_UP, "answered by fax"
        if now >= self.deadline_s:
            return Verdict.GREET, "no answering-machine detection result in time: taken for a person"
        return Verdict.WAIT, ""


class PendingAnswers:
    """AMD results, each kept `keep_s` for its call to take when its conversation begins; at most `most` of them.

    Twilio usually connects the stream first, but nothing orders its AMD callback after that, nor after the
    call's conductor is `Connected` (a streaming call may wait on other things first). A call's first
    decisive result stays (a later one changes nothing, as on a streaming call); `machine_start` gives way to
    what follows it. When full, the oldest is dropped: its call then goes on as with no result."""

    def __init__(self, keep_s: float = 60.0, most: int = 1024) -> None:
        self.keep_s, self.most = keep_s, most
        self._kept: dict[str, tuple[float, str]] = {}  # call sid -> (until when, AnsweredBy), oldest first

    def keep(self, call_sid: str, answered_by: str, now: float) -> None:
        self._kept = {sid: kept for sid, kept in self._kept.items() if kept[0] > now}
        earlier = self._kept.get(call_sid)
        if earlier is not None and earlier[1] not in STILL_LISTENING:
            return
        self._kept.pop(call_sid, None)
        self._kept[call_sid] = (now + self.keep_s, answered_by)
        while len(self._kept) > self.most:
            del self._kept[next(iter(self._kept))]

    def take(self, call_sid: str, now: float) -> str:
        """The call's conversation begins: its result, now its conductor's ("" if none came, or it lapsed)."""
        kept = self._kept.pop(call_sid, None)
        return kept[1] if kept is not None and kept[0] > now else ""

    def __len__(self) -> int:
        return len(self._kept)
