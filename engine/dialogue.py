"""Per-call dialogue history that holds only what the caller actually heard.

The LLM generates a reply (generation `gen`); the TTS speaks some of it; if the
caller interrupts, a `Heard` report says which prefix of the reply was played
before the `clear`. That prefix, not the generated text, becomes the assistant's
turn, so the model never believes it said what the caller never heard.
"""

from __future__ import annotations

from dataclasses import dataclass

# A reply the caller cut short is kept as the words they heard, with no mark of the cut in its text: the model copies
# marks. With "[interrupted by the caller]" after a cut reply, the bundled SmolLM2 ended 18 of 20 of its own replies
# with it, and Piper spoke it; with a dash it cut its own replies short with one; with a note at the start of the
# caller's next turn it answered "I'm happy to help" from then on; with a note in the system prompt it answered "What
# is the capital of France?" in broken French (tests/test_speakable.py). A larger model (Gemma 3) may be told in
# `llm.system_prompt` what a reply that stops mid-sentence means: the prompt's start never changes, so a model
# server's prefix cache keeps it.

MAX_CALLER_CHARS = 2000
"""The most of the caller's words one user turn keeps (~450 tokens): a caller talking on over the bot, turn after
turn, is merged into one turn, which must not grow without end. The latest words are kept."""


def latest_words(text: str, limit: int) -> str:
    """The end of `text` in at most `limit` characters, cut at a word boundary and marked as cut."""
    if len(text) <= limit:
        return text
    start = len(text) - limit + 1  # room for the mark
    if not text[start - 1].isspace():  # a word cut in two: drop what is left of it
        space = text.find(" ", start)
        if 0 <= space < len(text) - 1:
            start = space + 1
    return "…" + text[start:].lstrip()


@dataclass
class Turn:
    """One turn of the dialogue."""

    role: str  # "user" | "assistant"
    text: str
    gen: int | None = None  # the generation an assistant turn came from
    interrupted: bool = False


class Dialogue:
    """One call's chat history as the model sees it: what the caller said, and what the caller heard."""

    def __init__(self, system_prompt: str, max_turns: int = 40, max_caller_chars: int = MAX_CALLER_CHARS) -> None:
        self.system_prompt = system_prompt
        self.max_turns = max_turns
        self.max_caller_chars = max_caller_chars
        self.turns: list[Turn] = []

    def add_user(self, text: str) -> None:
        """Caller input. Consecutive user turns (e.g. speech then DTMF) are merged, keeping the latest
        `max_caller_chars`."""
        if self.turns and self.turns[-1].role == "user":
            self.turns[-1].text = latest_words(f"{self.turns[-1].text} {text}".strip(), self.max_caller_chars)
        else:
            self.turns.append(Turn("user", latest_words(text, self.max_caller_chars)))
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
        """The chat the model sees: system prompt, then turns (an interrupted one as the words the caller heard);
        with `then_user`, as it would be after `add_user(then_user)`, without adding it."""
        out = [{"role": "system", "content": self.system_prompt}]
        turns = [*self.turns, Turn("user", then_user)] if then_user is not None else self.turns
        for turn in turns:
            text = turn.text
            if out[-1]["role"] == turn.role:  # e.g. the caller's turns either side of a reply nobody heard
                out[-1]["content"] += " " + text
            else:
                out.append({"role": turn.role, "content": text})
        for message in out[1:]:
            if message["role"] == "user":
                message["content"] = latest_words(message["content"], self.max_caller_chars)
        return out

    def _assistant(self, gen: int) -> Turn | None:
        return next((t for t in reversed(self.turns) if t.role == "assistant" and t.gen == gen), None)

    def _trim(self) -> None:
        if len(self.turns) > self.max_turns:
            del self.turns[:len(self.turns) - self.max_turns]
