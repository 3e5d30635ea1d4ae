"""The audio of fixed lines (a greeting, a re-prompt, a goodbye), kept by the TTS process once made.

Every call opens with the same greeting, so made afresh it costs every call the same synthesis, and its
first audio waits on the voice's encoder. A fixed line's sentences (`Sentence.fixed`) are kept here once
spoken to their end, with what the voice planned of them (their length and word times), and any later
call gets them at once. Only whole sentences are kept: one cut short by a cancel is not. Bounded by bytes,
the least recently spoken line goes first.

One voice per TTS process, so a sentence's text is its key. Piper's noise makes each rendition slightly
different; a kept line is the same rendition on every call, as a recorded prompt is.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from engine.codec import Pcm16


@dataclass(frozen=True)
class Line:
    """A sentence's whole audio at the voice's rate, and where its words are in it (None: the voice did not say)."""

    audio: Pcm16
    words: list[tuple[int, int]] | None


class LineCache:
    """Sentences' audio by their text, at most `max_bytes` of it, least recently used out first."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self._lines: OrderedDict[str, Line] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lines)

    def get(self, text: str) -> Line | None:
        line = self._lines.get(text)
        if line is None:
            return None
        self.hits += 1
        self._lines.move_to_end(text)
        return line

    def put(self, text: str, line: Line) -> None:
        """Keep `line` as `text`'s audio (one larger than the whole cache is not kept)."""
        size = line.audio.nbytes
        if size > self.max_bytes:
            return
        old = self._lines.pop(text, None)
        if old is not None:
            self.bytes -= old.audio.nbytes
        while self._lines and self.bytes + size > self.max_bytes:
            _, evicted = self._lines.popitem(last=False)
            self.bytes -= evicted.audio.nbytes
        self._lines[text] = line
        self.bytes += size
