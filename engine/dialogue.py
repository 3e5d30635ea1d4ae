"""Per-call dialogue history that holds only what the caller actually heard.

The LLM generates a reply (generation `gen`); the TTS speaks some of it; if the
caller interrupts, a `Heard` report says which prefix of the reply was played
before the `clear`. That prefix, not the generated text, becomes the assistant's
turn, so the model never believes it said what the caller never heard.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Turn:
    """One turn of the dialogue."""

    role: str  # "user" | "assistant"
    text: str
    gen: int | None = None  # the generation an assistant turn came from
    interrupted: bool = False


class Dialogue:
    """One call's chat history as the model sees it: what the caller said, and what the caller heard."""

    def __init__(self, system_prompt: str, max_turns: int = 40) -> None:
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.turns: list[Turn] = []

    def add_user(self, text: str) -> None:
        """Caller input. Consecutive user turns (e.g. speech then DTMF) are merged."""
        if self.turns and self.turns[-1].role == "user":
            self.turns[-1].text = f"{self.turns[-1].text} {text}".strip()
        else:
            self.turns.append(Turn("user", text))
        self._trim()

    def add_assistant(self, gen: int, text: str) -> None:
        """What generation `gen` produced, provisionally: replaced by `heard` if the caller cut it short. A heard
        report that came first stands: the caller heard no more than it says."""
        turn = self._assistant(gen)
        if turn is None:
            self.turns.append(Turn("assistant", text, gen))
            self._trim()
        elif not turn.interrupted:
            turn.text = text

    def heard(self, gen: int, heard_text: str) -> None:
        """The caller heard only `heard_text` of generation `gen` (barge-in). Nothing heard: no turn."""
        turn = self._assistant(gen)
        if turn is None:
            if heard_text.strip():
                self.turns.append(Turn("assistant", heard_text.strip(), gen, interrupted=True))
            return
        if heard_text.strip():
            turn.text, turn.interrupted = heard_text.strip(), True
        else:
            self.turns.remove(turn)

    def messages(self, then_user: str | None = None) -> list[dict[str, str]]:
        """The chat the model sees: system prompt, then turns (an interrupted one marked as cut off); with
        `then_user`, as it would be after `add_user(then_user)`, without adding it."""
        out = [{"role": "system", "content": self.system_prompt}]
        turns = [*self.turns, Turn("user", then_user)] if then_user is not None else self.turns
        for turn in turns:
            text = f"{turn.text} [interrupted by the caller]" if turn.interrupted else turn.text
            if out[-1]["role"] == turn.role:
                out[-1]["content"] += " " + text
            else:
                out.append({"role": turn.role, "content": text})
        return out

    def _assistant(self, gen: int) -> Turn | None:
        return next((t for t in reversed(self.turns) if t.role == "assistant" and t.gen == gen), None)

    def _trim(self) -> None:
        if len(self.turns) > self.max_turns:
            del self.turns[:len(self.turns) - self.max_turns]
