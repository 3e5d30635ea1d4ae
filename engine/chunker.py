"""Streaming sentence chunking: LLM text deltas in, speakable pieces out, as early as is safe.

The first piece of a reply may end at a clause boundary (`,` `;` `:` `—`) once it has
`first_min_words` words, so speech starts before the first sentence is finished; with
no such boundary by `first_max_words` words, it ends at a natural break instead: just
before a conjunction or preposition ("I can check that | for you"), so the voice
starts after three to five words without breaking a phrase. After that, pieces are
whole sentences. A `.` ends a sentence only when whitespace
follows and it does not end an abbreviation ("Dr.", "e.g.", "a.m."), an initial
("J. Smith") or a list number ("2. Pears"); decimals, times, e-mail addresses and
URLs never have whitespace after their dots. A boundary at the very end of the
buffer waits for the next delta (or `flush`), since "3." may become "3.5".
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "etc", "e.g", "i.e", "a.m", "p.m",
    "u.s", "u.k", "inc", "ltd", "co", "corp", "no", "nos", "approx", "dept", "est", "fig", "jan", "feb", "mar",
    "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon", "tue", "tues", "wed", "thu", "thur",
    "thurs", "fri", "sat", "sun", "ave", "blvd", "rd", "min", "max", "tel", "ext", "vol", "ref",
})

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)|\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)])\s)")
_CLAUSE_END = re.compile(r"[,;:—–][\"')\]]*(?=\s)")
_WORD_BEFORE_DOT = re.compile(r"([\w.]+)\.$")
_WHOLE_WORD = re.compile(r"\S+(?=\s)")  # a word the next delta cannot extend
BREAK_BEFORE = frozenset({
    "and", "but", "or", "so", "because", "which", "that", "who", "when", "while", "if", "then", "to", "for", "with",
    "in", "on", "at", "from", "about", "as", "by", "after", "before", "until", "since", "than",
})


def _is_sentence_end(text: str, end: int) -> bool:
    """Whether the punctuation run ending at `end` closes a sentence."""
    mark = text[:end].rstrip("\"')]")
    if not mark.endswith(".") or mark.endswith(".."):
        return True  # ! ? … and newlines always end one
    m = _WORD_BEFORE_DOT.search(mark)
    if m is None:
        return True
    word = m.group(1).lower()
    if word in ABBREVIATIONS:
        return False
    if len(word) == 1 and word.isalpha() and m.group(1).isupper():
        return False  # an initial: "J. Smith"
    line_start = text.rfind("\n", 0, m.start()) + 1
    return not (word.isdigit() and text[line_start:m.start()].strip() == "")  # "2. Pears" at a line start


_WORD = re.compile(r"\S+")
LOOP_MAX_WORDS = 8  # the longest phrase a loop is looked for in
LOOP_MIN_WORDS = 8  # the fewest words its repeats span: "No, no, no, no" and "tick tock" x3 are speech, not loops
LOOP_SCAN_CHARS = 1000  # how much of a reply's end is read for a loop


def loop_start(text: str) -> int | None:
    """Where `text` starts repeating itself, if its end is one phrase (1-8 words, case and punctuation aside) said
    at least three times running and over at least `LOOP_MIN_WORDS` words: the index just past its first time (the
    run traced back to where it began, so a phrase first seen mid-delta is cut there too). A small model caught in a
    loop says "il y va la, il y va la, ..." until its token limit (bench/peer.py's --keep transcripts).

    Only the last `LOOP_SCAN_CHARS` are read, so a reply checked at every delta costs its length, not its square.
    Checked that often, a loop is caught once it spans 24 words at most, plus the last delta: a run traced back into
    text before the window takes a delta of more than ~700 characters, and it is then cut where the window
    begins."""
    skip = max(0, len(text) - LOOP_SCAN_CHARS)
    words = list(_WORD.finditer(text, skip))
    norm = [re.sub(r"\W+", "", w.group().lower()) for w in words]
    for n in range(1, LOOP_MAX_WORDS + 1):
        span = n * max(3, -(-LOOP_MIN_WORDS // n))
        if len(norm) < span:
            break
        tail = len(norm) - span
        if not any(norm[tail:tail + n]) or any(norm[i] != norm[i + n] for i in range(tail, len(norm) - n)):
            continue
        first = tail
        while first > 0 and norm[first - 1] == norm[first - 1 + n]:
            first -= 1  # the run began earlier than the part of it that was checked
        return words[first + n].start()
    return None


class SentenceChunker:
    """Cuts one reply's streamed text into speakable pieces: `push` deltas, `flush` at the end."""

    def __init__(self, first_min_words: int = 4, max_chars: int = 300, first_max_words: int = 6) -> None:
        self.first_min_words = first_min_words
        self.first_max_words = max(first_max_words, first_min_words + 1)
        self.max_chars = max_chars
        self._buf = ""
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        """Add generated text; returns the pieces now ready to speak."""
        self._buf += delta
        out: list[str] = []
        while (cut := self._next_cut()) is not None:
            piece, self._buf = self._buf[:cut].strip(), self._buf[cut:]
            if piece:
                out.append(piece)
                self._emitted += 1
        return out

    def flush(self) -> list[str]:
        """The end of the reply: whatever is left is the last piece."""
        piece, self._buf = self._buf.strip(), ""
        if piece:
            self._emitted += 1
            return [piece]
        return []

    def drop_last(self, chars: int) -> None:
        """Forget the last `chars` characters of text not yet cut into a piece (as many as it holds, at most)."""
        self._buf = self._buf[:max(0, len(self._buf) - chars)]

    def _natural_break(self, text: str) -> int | None:
        """Where the first piece may end with no punctuation: before the last break word that leaves it at least
        `first_min_words` words, once `first_max_words` whole words have come."""
        words = list(_WHOLE_WORD.finditer(text))
        if len(words) < self.first_max_words:
            return None
        for i in range(self.first_max_words - 1, self.first_min_words - 1, -1):
            if words[i].group().lower() in BREAK_BEFORE:
                return words[i].start()
        return None

    def _next_cut(self) -> int | None:
        text = self._buf
        for m in _SENTENCE_END.finditer(text):
            if _is_sentence_end(text, m.end()):
                return m.end()
        if self._emitted == 0:
            for m in _CLAUSE_END.finditer(text):
                if len(text[:m.start()].split()) >= self.first_min_words:
                    return m.end()
            cut = self._natural_break(text)
            if cut is not None:
                return cut
        if len(text) > self.max_chars:  # a run-on with no boundary: cut at the last space
            space = text.rfind(" ", 0, self.max_chars)
            return space if space > 0 else self.max_chars
        return None
