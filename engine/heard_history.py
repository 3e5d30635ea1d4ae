"""One call's dialogue as the LLM process holds it, kept again by the transport, for an LLM that restarts.

The LLM process builds each call's dialogue (engine.thinking's `Mind`, an
`engine.dialogue.Dialogue`) from what the transport tells it: the caller's words
with each reply asked for (or with the commit of a provisional one), what the caller
heard of an interrupted reply (`Heard`), and the reply itself once made, which is
what the caller hears when it plays to its end. It dies with the process. The
conductor keeps the same `Dialogue` from the same facts: a reply that played out
joins it as the text of its spoken spans. After an LLM restart its turns go to the
new process (`History`) before any new reply is asked for.
"""

from __future__ import annotations

from engine.dialogue import Dialogue, Turn
from ipc.schema import HistoryTurn

MAX_TURNS = 40
"""As many turns as the LLM's own dialogue keeps."""
MAX_CHARS = 16_000
"""At most this much text goes to a restarted LLM: the oldest turns are left out past it."""


class HeardHistory:
    """The call's dialogue as the LLM knows it: the caller's words, and what the caller heard of each reply."""

    def __init__(self, max_turns: int = MAX_TURNS, max_chars: int = MAX_CHARS) -> None:
        self.dialogue = Dialogue("", max_turns)
        self.max_chars = max_chars

    def restore(self, turns: tuple[HistoryTurn, ...]) -> None:
        """Begin from `turns` (an earlier call's, engine.memory): they answer to no reply of this call (no gen)."""
        self.dialogue.turns = [Turn(t.role, t.text, None, t.interrupted) for t in turns][-self.dialogue.max_turns:]

    def asked(self, caller_text: str) -> None:
        """A reply to `caller_text` was asked for (or a provisional one committed): the caller's turn."""
        if caller_text:
            self.dialogue.add_user(caller_text)

    def heard(self, gen: int, text: str) -> None:
        """Of reply `gen`, the caller heard only `text` (what `Heard` tells the LLM)."""
        self.dialogue.heard(gen, text)

    def played(self, gen: int, text: str) -> None:
        """Reply `gen`, made by the LLM, played to its end: all of it was heard."""
        self.dialogue.add_assistant(gen, text)

    def retract(self, caller_text: str) -> None:
        """The reply to `caller_text` is asked for again, words and all: they leave the last caller turn."""
        turns = self.dialogue.turns
        if not caller_text or not turns or turns[-1].role != "user" or not turns[-1].text.endswith(caller_text):
            return
        rest = turns[-1].text[:-len(caller_text)].strip()
        if rest:
            turns[-1].text = rest
        else:
            turns.pop()

    def turns(self) -> list[HistoryTurn]:
        """The dialogue to hand a restarted LLM: its latest turns, within `max_chars`."""
        out: list[HistoryTurn] = []
        chars = 0
        for turn in reversed(self.dialogue.turns):
            chars += len(turn.text)
            if chars > self.max_chars:
                break
            out.append(HistoryTurn(role="user" if turn.role == "user" else "assistant", text=turn.text, gen=turn.gen,
                                   interrupted=turn.interrupted))
        return out[::-1]
