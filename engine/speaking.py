"""The TTS process's logic, with no rings, sockets or threads: sentences in, 20 ms frames and spans out.

`Speaking` keeps one `Voice` per call (which replies are void, whether the call is
over) and answers the sentences to speak. `SentenceFrames` cuts one sentence's
audio, as the backend makes it, into 20 ms frames stamped with the reply's
generation; its last frame carries FLAG_MARK (the transport sends a Twilio mark
after it) and, for a reply's last sentence, FLAG_END. Once written, the frames'
ring sequence numbers make the `Spoken` span that tells the transport which frames
carry which text: that is how it knows what the caller heard. `SentenceRun` speaks
one sentence a piece at a time into a frame writer the process provides (the call's
outbound ring), so the process can turn to another call between pieces (see
`engine.tts_schedule`); `speak` runs one to the end, as tests do with a list.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from engine.calls import CallTable, EarlyMessages
from engine.codec import Pcm16
from engine.line_cache import Line, LineCache
from engine.tts import TtsBackend
from ipc.ring import FLAG_END, FLAG_MARK, gen_flags
from ipc.schema import CallEnded, CallStarted, Cancel, Sentence, Spoken

FRAMES_PER_SECOND = 50  # 20 ms frames, as Twilio plays them


@dataclass(frozen=True)
class Stage:
    """A trace stage a reply reached just now (see engine.trace)."""

    name: str


Outcome = Literal["spoken", "stopped"]


@dataclass
class Voice:
    """One call's speaking state. `writer` and `stalled_since` belong to the process (its ring writer, made by
    the thread that writes, and how long that ring has been full)."""

    slot: int
    epoch: int
    cancelled: set[int] = field(default_factory=set)
    ended: bool = False
    sounded_gen: int = 0  # the latest reply whose first audio has been written
    writer: Any = None
    stalled_since: float | None = None  # when its full ring first held back a sentence, until it takes a frame
    plays_until: float = 0.0  # (monotonic s) when the caller will have heard all the audio written for it

    def wrote(self, seconds: float, now: float) -> None:
        """`seconds` of audio went into the ring now. The transport takes it at once and Twilio plays it at real
        time, after what was written before: the same play-out clock as the transport's pacer."""
        self.plays_until = max(self.plays_until, now) + seconds

    def audio_left(self, now: float) -> float:
        """Seconds of this call's audio its caller has still to hear: what the TTS schedules by. (The ring's own
        fill says nothing: the transport empties it at once.)"""
        return max(0.0, self.plays_until - now)


@dataclass
class SentenceJob:
    """A sentence to speak for a call."""

    voice: Voice
    sentence: Sentence

    def void(self) -> bool:
        """Its reply was cancelled or its call is over: nothing more of it may be written."""
        return self.sentence.gen in self.voice.cancelled or self.voice.ended


class Speaking:
    """Every call's voice in the TTS process; `handle` a message, get the sentences it asks to speak."""

    def __init__(self) -> None:
        self.calls: CallTable[Voice] = CallTable()
        self.cancels = 0
        self._early: EarlyMessages[Cancel | Sentence] = EarlyMessages()

    def handle(self, msg: CallStarted | CallEnded | Cancel | Sentence) -> list[SentenceJob]:
        if isinstance(msg, CallStarted):
            accepted, _ = self.calls.start(msg.slot, msg.epoch, msg.call_id, Voice(msg.slot, msg.epoch))
            if accepted:
                return [job for early in self._early.release(msg.call_id) for job in self.handle(early)]
        elif isinstance(msg, CallEnded):
            ended = self.calls.end(msg.slot, msg.epoch)
            if ended is not None:
                ended.state.ended = True
        else:
            call = self.calls.find(msg.call_id)
            if call is None:
                self._early.hold(msg.call_id, msg)
            elif isinstance(msg, Cancel):
                self.cancels += 1
                call.state.cancelled.add(msg.gen)
                call.state.plays_until = 0.0  # the transport drops its unplayed audio (barge-in) or never sent it
            elif msg.gen not in call.state.cancelled:
                return [SentenceJob(call.state, msg)]
        return []


class SentenceFrames:
    """One sentence's audio as ring frames: `add` chunks as they come, `tail` the last frame, `wrote` each
    frame's seq; then `spoken` is its span."""

    def __init__(self, sentence: Sentence, rate: int) -> None:
        self.sentence = sentence
        self.samples = rate // FRAMES_PER_SECOND
        self.stamp = gen_flags(sentence.gen)  # lets the transport drop this reply's frames once it is cancelled
        self._pending = np.zeros(0, np.int16)
        self.seq_first: int | None = None
        self.seq_last = -1
        self.frames_planned: int | None = None  # all the sentence's frames, when the backend said its length
        self.words_ms: list[tuple[int, int]] = []  # where each word is, when the backend said
        self.told = False  # its span went out early, with its first frame

    def plan(self, samples: int, words: list[tuple[int, int]] | None = None) -> None:
        """The sentence will make `samples` of audio in all: its frames, the last one padded (`tail`), are known;
        with `words`, where each word starts and ends in those samples."""
        self.frames_planned = samples // self.samples + 1
        ms = 1000 / (self.samples * FRAMES_PER_SECOND)
        self.words_ms = [(round(start * ms), round(end * ms)) for start, end in words or []]

    def add(self, chunk: Pcm16) -> list[Pcm16]:
        """The next audio of the sentence; the whole frames it completes."""
        self._pending = np.concatenate([self._pending, chunk])
        whole = len(self._pending) // self.samples * self.samples
        frames = [self._pending[i:i + self.samples] for i in range(0, whole, self.samples)]
        self._pending = self._pending[whole:]
        return frames

    def tail(self) -> tuple[Pcm16, int]:
        """The sentence's last frame (what is left, padded with silence; a silent frame if nothing is: the flags
        need a frame to ride on) and its flags."""
        pad = np.zeros(-len(self._pending) % self.samples if len(self._pending) else self.samples, np.int16)
        flags = self.stamp | FLAG_MARK | (FLAG_END if self.sentence.last else 0)
        return np.concatenate([self._pending, pad]), flags

    def wrote(self, seq: int, voice: Voice) -> list[Stage]:
        """Frame `seq` of the sentence is in the ring; the trace stage it reaches, if any."""
        self.seq_last = seq
        if self.seq_first is not None:
            return []
        self.seq_first = seq
        if voice.sounded_gen < self.sentence.gen:
            voice.sounded_gen = self.sentence.gen
            return [Stage("tts_first_audio")]
        return []

    def spoken(self, seq_last: int | None = None) -> Spoken:
        """The sentence's span: up to the last frame written, or to `seq_last`."""
        s = self.sentence
        assert self.seq_first is not None, "no frame of the sentence was written"
        return Spoken(call_id=s.call_id, gen=s.gen, index=s.index, seq_first=self.seq_first,
                      seq_last=self.seq_last if seq_last is None else seq_last, text=s.text, last=s.last,
                      words_ms=self.words_ms)

    def early(self) -> Spoken | None:
        """The span, once the first frame is written, for a sentence whose length is planned: the frames follow
        it one by one in the call's ring, so the last one's seq is known. Once."""
        if self.told or self.frames_planned is None or self.seq_first is None:
            return None
        self.told = True
        return self.spoken(self.seq_first + self.frames_planned - 1)


class SentenceRun:
    """One sentence being spoken a piece at a time, so the process can turn to a more urgent call between
    pieces: `step` writes the frames there is room for, making the next piece of audio when none is ready."""

    def __init__(self, job: SentenceJob, backend: TtsBackend, emit: Callable[[Spoken | Stage], None],
                 lines: LineCache | None = None) -> None:
        """`lines`: where a fixed line's sentences are kept once spoken whole, and found (engine/line_cache.py)."""
        self.job, self.emit, self.lines = job, emit, lines
        self.framer = SentenceFrames(job.sentence, backend.sample_rate)
        text = job.sentence.text
        self._chunks: Iterator[Pcm16] = iter(())
        self._backend, self._text = backend, text
        self._ready: deque[tuple[Pcm16, int]] = deque()
        self._started = False
        self._made_all = False

    def step(self, room: int, write: Callable[[Pcm16, int], int]) -> Outcome | None:
        """Write up to `room` frames with `write` (which takes a frame and its flags and answers its seq):
        "spoken" once the last frame and the span are out, "stopped" once the reply is void (checked before
        every frame), None while more remains. Blocks for the synthesis of one piece at most."""
        if self.job.void():
            return self.close("stopped")
        if not self._started:
            self._started = True
            if self.job.sentence.index == 0:
                self.emit(Stage("tts_start"))
            self._chunks = self._synthesis()
        if not self._ready and not self._made_all:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._made_all = True
                self._ready.append(self.framer.tail())
            else:
                self._ready.extend((frame, self.framer.stamp) for frame in self.framer.add(chunk))
        for _ in range(min(room, len(self._ready))):
            if self.job.void():
                return self.close("stopped")
            seq = write(*self._ready.popleft())
            for stage in self.framer.wrote(seq, self.job.voice):
                self.emit(stage)
            if (early := self.framer.early()) is not None:
                self.emit(early)
        if self._made_all and not self._ready:
            span = self.framer.spoken()
            if not self.framer.told or span.seq_last - span.seq_first + 1 != self.framer.frames_planned:
                self.emit(span)  # not told early (or, against the plan, told wrong: this one replaces it)
            return self.close("spoken")
        return None

    def _synthesis(self) -> Iterator[Pcm16]:
        """The backend's audio for the sentence, with its length first where the backend can plan it; a fixed
        line's kept audio, planned, where it was spoken before."""
        if not self._text.strip():
            return iter(())
        lines = self.lines if self.job.sentence.fixed else None  # only a fixed line's audio is kept
        if lines is not None and (line := lines.get(self._text)) is not None:
            self.framer.plan(len(line.audio), line.words)
            return iter((line.audio,))
        planned = getattr(self._backend, "planned", None)
        words = None
        if planned is None:
            audio = self._backend.synthesize(self._text)
        else:
            plan = planned(self._text)
            self.framer.plan(int(plan.samples), plan.words)
            audio, words = iter(plan.audio), plan.words
        return audio if lines is None else self._keeping(audio, words, lines)

    def _keeping(self, audio: Iterator[Pcm16], words: list[tuple[int, int]] | None,
                 lines: LineCache) -> Iterator[Pcm16]:
        """`audio` as it comes; once it has all come, kept in `lines` (a sentence cut short is not)."""
        made: list[Pcm16] = []
        try:
            for chunk in audio:
                made.append(chunk)
                yield chunk
        finally:
            close = getattr(audio, "close", None)
            if close is not None:
                close()
        if made:
            lines.put(self._text, Line(np.concatenate(made), words))

    def close(self, outcome: Outcome = "stopped") -> Outcome:
        """Stop making audio (leaving the generator early cancels the synthesis); answers `outcome`."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        return outcome


def speak(job: SentenceJob, backend: TtsBackend, write: Callable[[Pcm16, int], int],
          emit: Callable[[Spoken | Stage], None], lines: LineCache | None = None) -> Outcome:
    """Speak `job`'s whole sentence into `write`, as fast as the backend makes it (there is always room)."""
    run = SentenceRun(job, backend, emit, lines)
    while (outcome := run.step(1 << 30, write)) is None:
        pass
    return outcome
