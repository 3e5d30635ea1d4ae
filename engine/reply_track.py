"""A reply as the conductor follows it on its way to the caller: its audio spans, and what of it was heard.

The TTS tells the transport which ring frames carry each piece of a reply (`Spoken`:
with the piece's first frame when the voice knows its length, else after its last).
Twilio echoes a mark once each span has played. When the caller cuts in, `heard_words`
says what of the reply got across: the spans played, then the played share of the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FRAME_MS = 20  # a ring frame: 20 ms of audio, at whatever rate


@dataclass
class Span:
    """Frames seq_first..seq_last of the call's outbound ring carry `text`, piece `index` of a reply."""

    index: int
    seq_first: int
    seq_last: int
    text: str
    last: bool
    played: bool = False
    words_ms: tuple[tuple[int, int], ...] = ()  # where each word of `text` is, ms from the span's first frame


@dataclass
class ReplyTrack:
    """One reply of a call: what it answers, its spans, and how far it has got."""

    gen: int
    requested_s: float
    caller_text: str = ""  # what it answers, so a lost reply can be retried
    retried: bool = False
    closing: bool = False  # a last line: the call ends when it has played
    spans: dict[int, Span] = field(default_factory=dict)  # by seq_last, the seq its mark carries
    audio: bool = False
    done: bool = False  # its last span has played
    provisional: bool = False  # started at a pause: held until the turn is over as transcribed
    llm: bool = True  # made by the LLM (not a line the TTS says for the transport): it joins the LLM's dialogue

    def add(self, span: Span) -> None:
        """A span the TTS told of; one told early, then again, is replaced: the later one stands."""
        for seq, told in list(self.spans.items()):
            if told.index == span.index:
                del self.spans[seq]
        self.spans[span.seq_last] = span

    def in_order(self) -> list[Span]:
        return sorted(self.spans.values(), key=lambda s: s.index)


def heard_words(reply: ReplyTrack, played: int | None) -> str:
    """The words of `reply` the caller heard: whole spans played, then the played share of the next."""
    words: list[str] = []
    for span in reply.in_order():
        if span.played or (played is not None and played >= span.seq_last):
            words += span.text.split()
            continue
        if played is not None and played >= span.seq_first:
            played_ms = (played - span.seq_first + 1) * FRAME_MS
            share = played_ms / ((span.seq_last - span.seq_first + 1) * FRAME_MS)
            timed = len(span.words_ms) == len(span.text.split())
            words += words_timed(span.text, span.words_ms, played_ms) if timed else words_within(span.text, share)
        break
    return " ".join(words)


def words_timed(text: str, words_ms: tuple[tuple[int, int], ...], played_ms: float) -> list[str]:
    """The words of `text` the caller heard in its first `played_ms`, by the voice's own timing: a word counts
    once its middle has played."""
    out = []
    for word, (start, end) in zip(text.split(), words_ms, strict=True):
        if (start + end) / 2 > played_ms:
            break
        out.append(word)
    return out


def words_within(text: str, share: float) -> list[str]:
    """The words of `text` the caller heard in the first `share` of its audio: speech takes time by its letters more
    than by its words, and a word counts once the characters up to its middle fit in that share of them (a word
    cut off half-said was heard, as a listener, or a transcript of the audio, would have it)."""
    budget = share * len(text)
    out: list[str] = []
    end = 0
    for word in text.split():
        end = text.index(word, end) + len(word)
        if end - len(word) / 2 > budget:
            break
        out.append(word)
    return out
