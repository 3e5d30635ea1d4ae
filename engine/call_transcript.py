"""A call's transcript, turn by turn: what the caller said, what the bot said and what of it the caller heard.

Built as the call goes from what its conductor is given and what it decides (no
second state machine): a final transcript the conductor answers, or a provisional
one it commits, is the caller's turn; one it takes as a backchannel, or ignores
while a last line plays, is kept and marked so. A reply's words are its `Spoken`
spans; what the caller heard of it is all of them when its last mark came back, or
what `ReportHeard` tells the LLM when it was cut short (by a barge-in, a keypress,
the time limit, or a newer reply). A provisional reply that was discarded was never
heard and is not in it. Times are seconds from the call's start (`t_s`), with the
start's wall-clock time in the document. `document()` is what transcript.json and
the call-end webhook carry.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from engine.conductor_io import (
    Action,
    AudioStarted,
    CommitReply,
    DiscardReply,
    Event,
    HangUp,
    KeyPressed,
    Note,
    ReportHeard,
    RequestReply,
    Speak,
    Transfer,
)
from ipc.schema import Spoken, Transcript

INTERRUPTIONS = frozenset({"barge-in", "keypress", "time limit", "asked for a person"})
"""The conductor's notes for a reply the caller (or the clock) cut short; the note's detail is what was heard."""
CALLER_ASIDES = {"backchannel": "backchannel", "ignored while ending": "ignored"}
"""The conductor's notes for caller words that were not a turn: the mark each gets in the transcript."""
HAND_OFF = frozenset({"transfer", "transfer asked for, none set", "transfer failed"})
"""The conductor's notes about a hand-off to a person (engine.handoff): each is an event in the transcript."""


@dataclass
class _Reply:
    gen: int
    t_s: float
    verbatim: bool
    provisional: bool = False
    spans: dict[int, str] = field(default_factory=dict)
    heard: str | None = None  # None: not known yet
    interrupted_by: str = ""

    @property
    def said(self) -> str:
        return " ".join(text for _, text in sorted(self.spans.items()) if text)


def iso(unix_s: float) -> str:
    return datetime.datetime.fromtimestamp(unix_s, datetime.UTC).isoformat(timespec="milliseconds")


class CallTranscript:
    """One call's turns as they happen; `observe` each conductor step, `document` once it is over."""

    def __init__(self, started_mono_s: float, started_unix_s: float) -> None:
        self.started_mono_s = started_mono_s
        self.started_unix_s = started_unix_s
        self.entries: list[dict[str, Any]] = []
        self._replies: dict[int, _Reply] = {}
        self._final: tuple[str, float] | None = None  # the latest final transcript: its text, when speech ended

    def _t(self, mono_s: float) -> float:
        return round(mono_s - self.started_mono_s, 3)

    def observe(self, event: Event, actions: list[Action], now: float) -> None:
        """The conductor was given `event` at `now` (monotonic s) and decided `actions`."""
        if isinstance(event, Transcript) and event.final:
            self._final = (event.text.strip(), event.speech_end_t_ns / 1e9)
        elif isinstance(event, KeyPressed):
            self.entries.append({"t_s": self._t(now), "speaker": "caller", "keypress": event.digit})
        elif isinstance(event, Spoken) and (reply := self._replies.get(event.gen)) is not None:
            reply.spans[event.index] = event.text
        elif isinstance(event, AudioStarted) and (reply := self._replies.get(event.gen)) is not None:
            reply.t_s = self._t(now)
        for action in actions:
            self._act(action, event, now)

    def _act(self, action: Action, event: Event, now: float) -> None:
        if isinstance(action, RequestReply | Speak):
            provisional = isinstance(action, RequestReply) and action.provisional
            self._replies[action.gen] = _Reply(action.gen, self._t(now), isinstance(action, Speak) or
                                               bool(action.say), provisional)
            if isinstance(action, RequestReply) and action.caller_text and not provisional \
                    and isinstance(event, Transcript):  # (keys and retries after a restart are not new words)
                self._caller(action.caller_text, now)
        elif isinstance(action, CommitReply) and (reply := self._replies.get(action.gen)) is not None:
            reply.provisional = False
            self._caller(self._final[0] if self._final else "", now)
        elif isinstance(action, DiscardReply):
            self._replies.pop(action.gen, None)
        elif isinstance(action, ReportHeard) and (reply := self._replies.get(action.gen)) is not None:
            reply.heard = action.text
            reply.interrupted_by = "stopped"  # the note that follows may say why
            self._close(reply)
        elif isinstance(action, Note):
            if action.what in HAND_OFF and isinstance(event, Transcript):  # asked for in words: no reply answers them
                self._caller(event.text, now)
            self._note(action, now)
        elif isinstance(action, Transfer):
            self._played_out()
            self.entries.append({"t_s": self._t(now), "event": "put through", "to": action.to})
        elif isinstance(action, HangUp):
            if action.reason == "said goodbye":
                self._played_out()
            self.entries.append({"t_s": self._t(now), "event": "hang-up", "reason": action.reason})

    def _note(self, note: Note, now: float) -> None:
        reply = self._replies.get(note.gen)
        if note.what in INTERRUPTIONS:  # the reply's ReportHeard came just before: its entry is there
            for entry in self.entries[::-1]:
                if entry.get("gen") == note.gen and entry.get("interrupted_by") == "stopped":
                    entry["interrupted_by"] = note.what
                    break
        elif note.what in CALLER_ASIDES:
            self._caller(note.detail, now, CALLER_ASIDES[note.what])
        if note.what in HAND_OFF:
            self.entries.append({"t_s": self._t(now), "event": note.what, "detail": note.detail})
        elif note.what == "reply played" and reply is not None:
            reply.heard = reply.said
            self._close(reply)

    def _played_out(self) -> None:
        """The last line played to its end (the conductor hangs up after it)."""
        for reply in list(self._replies.values()):
            if not reply.provisional and reply.heard is None and reply.spans:
                reply.heard = reply.said
                self._close(reply)

    def _caller(self, text: str, now: float, aside: str = "") -> None:
        t = now
        if self._final is not None and self._final[0] == text.strip():
            t = self._final[1]  # the caller's turn is when they stopped speaking, not when it was transcribed
        entry: dict[str, Any] = {"t_s": self._t(t), "speaker": "caller", "text": text.strip()}
        if aside:
            entry[aside] = True
        self.entries.append(entry)

    def _close(self, reply: _Reply) -> None:
        self._replies.pop(reply.gen, None)
        if not reply.spans and not reply.heard:
            return  # stopped before it made a sound: the caller heard nothing of it and nothing was said
        heard = reply.heard or ""
        entry: dict[str, Any] = {"t_s": reply.t_s, "speaker": "bot", "gen": reply.gen, "said": reply.said,
                                 "heard": heard, "interrupted": heard != reply.said}
        if reply.interrupted_by:
            entry["interrupted_by"] = reply.interrupted_by
        if reply.verbatim:
            entry["verbatim"] = True  # a fixed line (greeting, re-prompt, apology), not the model's words
        self.entries.append(entry)

    def live(self, now: float) -> dict[str, Any]:
        """The turns so far, a reply still in progress as what it said so far (`heard` None, `playing`)."""
        playing = [{"t_s": r.t_s, "speaker": "bot", "gen": r.gen, "said": r.said, "heard": None, "playing": True}
                   for r in self._replies.values() if not r.provisional and r.spans]
        return {"duration_s": self._t(now), "turns": sorted([*self.entries, *playing], key=lambda e: e["t_s"])}

    def document(self, now: float, outcome: str, heard_now: dict[int, str], **about: Any) -> dict[str, Any]:
        """The whole transcript. `heard_now`: what the caller heard of replies still playing when the call
        ended (the conductor's reckoning by the play-out clock), by gen."""
        for reply in list(self._replies.values()):
            if not reply.provisional:
                reply.heard = heard_now.get(reply.gen, "")
                reply.interrupted_by = "the call ended"
                self._close(reply)
        ended_unix_s = self.started_unix_s + (now - self.started_mono_s)
        turns = sorted(self.entries, key=lambda e: e["t_s"])
        return {**about, "started_at": iso(self.started_unix_s), "ended_at": iso(ended_unix_s),
                "duration_s": self._t(now), "outcome": outcome,
                "barge_ins": sum(e.get("interrupted_by") in ("barge-in", "keypress") for e in turns),
                "turns": turns}


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Engine-Signature` header of a call-end POST: `t=<unix s>,v1=<hex HMAC-SHA256 of "<t>." + body>`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def signature_valid(secret: str, header: str, body: bytes, now: float, tolerance_s: float = 300) -> bool:
    """What a receiver checks: the signature is ours over this body, and recent (a replayed POST is not)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    stamp = fields.get("t", "")
    if not stamp.isdigit() or len(stamp) > 12 or abs(now - int(stamp)) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, int(stamp), body), header.strip())
