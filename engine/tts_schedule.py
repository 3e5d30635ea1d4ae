"""Which call the TTS speaks for next: the one whose caller runs out of audio first.

One synthesis engine serves every call. Taking sentences first come, first served
lets one call's long reply hold up every other call's first words, and a reply's
later sentences make a reply just begun run dry after its first chunk. Instead
each call keeps its own queue of sentences, in order, and between pieces of audio
the process asks `Schedule.pick` for the call whose queued audio runs out soonest:
a call with nothing left to hear (a reply's first words, or a reply about to
stall) goes before one that has seconds of audio still to play, and among equals
the sentence that came first goes first. How much each caller has left is the
TTS's own play-out clock (`Voice.audio_left`): the transport empties the rings at
once, so their fill says nothing. A call whose ring is full waits without holding
up anyone. Nothing starves: queued audio drains at real time.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.speaking import SentenceJob, SentenceRun, Voice


@dataclass
class Queued:
    """A sentence waiting in its call's queue; `run` once it has begun."""

    job: SentenceJob
    arrival: int
    run: SentenceRun | None = None


@dataclass
class CallQueue:
    """One call's sentences, in the order they are to be spoken."""

    voice: Voice
    sentences: deque[Queued] = field(default_factory=deque)


class Schedule:
    """Every call's sentences, each call's in order; `pick` the head sentence of the call that needs audio
    soonest."""

    def __init__(self) -> None:
        self._calls: dict[int, CallQueue] = {}  # by id(voice): a Voice is one call's, for its whole life
        self._arrivals = itertools.count()

    def add(self, job: SentenceJob) -> None:
        queue = self._calls.setdefault(id(job.voice), CallQueue(job.voice))
        queue.sentences.append(Queued(job, next(self._arrivals)))

    def __len__(self) -> int:
        return sum(len(q.sentences) for q in self._calls.values())

    def pick(self, audio_left: Callable[[Voice], int], room: Callable[[Voice], int], *,
             first_words_grace: int = 0) -> Queued | None:
        """The head sentence of the call with the least audio left for its caller to hear (`audio_left`, in any
        unit; then the earliest arrival) among calls with room for a frame; void sentences are dropped on the
        way, their runs closed. None if no call can take a frame now.

        A reply's first words (its first sentence, not begun) rank as if their caller had `first_words_grace`
        left: a reply that will run dry sooner than that goes first, since a stall mid-reply is heard, and a
        few tens of milliseconds more before an answer are not."""
        best: tuple[int, int, Queued] | None = None
        for key, queue in list(self._calls.items()):
            while queue.sentences and queue.sentences[0].job.void():
                self._finish(queue.sentences.popleft())
            if not queue.sentences:
                del self._calls[key]
                continue
            if room(queue.voice) <= 0:
                continue
            head = queue.sentences[0]
            left = audio_left(queue.voice)
            if head.run is None and head.job.sentence.index == 0:
                left = max(left, first_words_grace)
            rank = (left, head.arrival, head)
            if best is None or rank[:2] < best[:2]:
                best = rank
        return None if best is None else best[2]

    def done(self, item: Queued) -> None:
        """`item` (a call's head sentence) is spoken, stopped or failed: its call goes on to the next."""
        queue = self._calls.get(id(item.job.voice))
        if queue is not None and queue.sentences and queue.sentences[0] is item:
            queue.sentences.popleft()
            if not queue.sentences:
                del self._calls[id(item.job.voice)]
        self._finish(item)

    def blocked(self, room: Callable[[Voice], int]) -> list[Voice]:
        """Calls with a sentence to speak and no room in their ring."""
        return [q.voice for q in self._calls.values()
                if q.sentences and not q.sentences[0].job.void() and room(q.voice) <= 0]

    def clear(self) -> None:
        for queue in self._calls.values():
            for item in queue.sentences:
                self._finish(item)
        self._calls.clear()

    @staticmethod
    def _finish(item: Queued) -> None:
        if item.run is not None:
            item.run.close()
            item.run = None
