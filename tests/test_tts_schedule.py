"""Which call the TTS speaks for next, with no process, ring or model: a tone backend and rings as counters."""

from __future__ import annotations

import pytest

from engine.codec import Pcm16
from engine.speaking import SentenceRun, Speaking, Stage, Voice
from engine.tts_schedule import Queued, Schedule
from ipc.schema import CallStarted, Cancel, Sentence, Spoken
from tests.test_speaking import ToneTts


class Rings:
    """Each call's ring as a count of frames queued to play, with a capacity; `log` is (call, text) per frame."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self.queued: dict[int, int] = {}
        self.log: list[tuple[int, str]] = []

    def queued_frames(self, voice: Voice) -> int:
        return self.queued.get(voice.slot, 0)

    def room(self, voice: Voice) -> int:
        return self.capacity - self.queued_frames(voice)

    def play(self, slot: int, frames: int) -> None:
        self.queued[slot] = max(0, self.queued.get(slot, 0) - frames)


def start(speaking: Speaking, slot: int) -> None:
    speaking.handle(CallStarted(call_id=f"CA{slot}", slot=slot, epoch=1, inbound_rate=16000))


def say(speaking: Speaking, schedule: Schedule, slot: int, text: str, index: int = 0, gen: int = 1) -> None:
    for job in speaking.handle(Sentence(call_id=f"CA{slot}", gen=gen, index=index, text=text, last=False)):
        schedule.add(job)


def step(schedule: Schedule, rings: Rings, tts: ToneTts, outs: list[Spoken | Stage]) -> Queued | None:
    item = schedule.pick(rings.queued_frames, rings.room)
    if item is None:
        return None
    voice, text = item.job.voice, item.job.sentence.text

    def write(frame: Pcm16, flags: int) -> int:
        rings.queued[voice.slot] = rings.queued_frames(voice) + 1
        rings.log.append((voice.slot, text))
        return len(rings.log)

    if item.run is None:
        item.run = SentenceRun(item.job, tts, outs.append)
    if item.run.step(rings.room(voice), write) is not None:
        schedule.done(item)
    return item


def test_a_new_replys_first_words_go_before_the_rest_of_a_long_reply_already_playing() -> None:
    speaking, schedule, rings, tts = Speaking(), Schedule(), Rings(), ToneTts()
    outs: list[Spoken | Stage] = []
    start(speaking, 0)
    start(speaking, 1)
    long = " ".join(["word"] * 40)  # 4 s of audio: more than the ring holds
    say(speaking, schedule, 0, long)
    say(speaking, schedule, 0, "and the rest.", index=1)
    while rings.queued_frames(schedule.pick(rings.queued_frames, rings.room).job.voice) < 20:  # type: ignore[union-attr]
        step(schedule, rings, tts, outs)
    say(speaking, schedule, 1, "Hello there.")  # call 1's reply comes while call 0 has audio queued
    step(schedule, rings, tts, outs)
    assert rings.log[-1] == (1, "Hello there.")


def test_each_calls_sentences_stay_in_order_and_a_full_ring_holds_up_no_one() -> None:
    speaking, schedule, rings, tts = Speaking(), Schedule(), Rings(capacity=10), ToneTts()
    outs: list[Spoken | Stage] = []
    start(speaking, 0)
    start(speaking, 1)
    say(speaking, schedule, 0, "one two three four five")  # 25 frames: more than call 0's ring takes
    say(speaking, schedule, 0, "six.", index=1)
    say(speaking, schedule, 1, "a b c d e f g h")
    for _ in range(200):
        if step(schedule, rings, tts, outs) is None:
            rings.play(0, 3)  # nobody can take a frame: real time plays some
            rings.play(1, 3)
    assert not len(schedule)
    by_call = {slot: [text for s, text in rings.log if s == slot] for slot in (0, 1)}
    first_six = by_call[0].index("six.")
    assert all(t == "one two three four five" for t in by_call[0][:first_six]) and len(by_call[0][:first_six]) == 26
    assert len(by_call[1]) == 41
    # Call 1 spoke while call 0's full ring waited: its frames came between call 0's first and last.
    slots = [s for s, _ in rings.log]
    assert slots.index(1) < len(slots) - 1 - slots[::-1].index(0)


def test_a_cancelled_reply_is_dropped_from_the_schedule_and_its_synthesis_closed() -> None:
    speaking, schedule, rings, tts = Speaking(), Schedule(), Rings(capacity=5), ToneTts()
    outs: list[Spoken | Stage] = []
    start(speaking, 0)
    say(speaking, schedule, 0, "one two three four five six")
    say(speaking, schedule, 0, "seven.", index=1)
    while step(schedule, rings, tts, outs) is not None:  # begun, until the ring is full
        pass
    assert rings.log and len(schedule) == 2
    speaking.handle(Cancel(call_id="CA0", gen=1))
    rings.play(0, 5)
    assert schedule.pick(rings.queued_frames, rings.room) is None and not len(schedule)
    assert tts.closed_early
    assert not any(isinstance(o, Spoken) for o in outs)


def test_a_reply_just_begun_goes_before_a_later_sentence_of_a_call_with_seconds_queued() -> None:
    """The TTS's own play-out clock ranks the calls: the transport empties every ring at once, so ring fill
    made every call look starved, and sentences went first come, first served (with five callers, nearly every
    stall began when a reply's 186 ms first chunk ran out while another call's later sentence was made)."""
    speaking, schedule = Speaking(), Schedule()
    start(speaking, 0)
    start(speaking, 1)
    say(speaking, schedule, 1, "A later sentence of a long reply.", index=2)  # arrived first
    say(speaking, schedule, 0, "The rest of a reply just begun.", index=1)
    busy, begun = (call.state for call in (speaking.calls.find("CA1"), speaking.calls.find("CA0")))
    assert busy is not None and begun is not None
    busy.wrote(3.0, now=10.0)  # its caller has 3 s still to hear
    begun.wrote(0.186, now=10.0)  # the first chunk, playing now

    def left_ms(voice: Voice) -> int:
        return round(voice.audio_left(10.05) * 1000)

    picked = schedule.pick(left_ms, lambda voice: 64)
    assert picked is not None and picked.job.voice is begun
    assert (left_ms(begun), left_ms(busy)) == (136, 2950)
    # Audio written back to back plays back to back; after a gap it starts when written.
    begun.wrote(0.2, now=10.1)
    assert begun.audio_left(10.1) == pytest.approx(0.286) and begun.audio_left(11.0) == 0.0
    begun.wrote(0.5, now=11.0)
    assert begun.audio_left(11.0) == 0.5
    # A barge-in: the transport drops what was unplayed, so the call has nothing left to hear.
    speaking.handle(Cancel(call_id="CA0", gen=1))
    assert begun.audio_left(11.0) == 0.0


def test_a_reply_about_to_run_dry_goes_before_another_replys_first_words() -> None:
    speaking, schedule = Speaking(), Schedule()
    for slot in (0, 1):
        start(speaking, slot)
    say(speaking, schedule, 1, "A new answer.", index=0)  # its caller waits for it (nothing left to hear)
    say(speaking, schedule, 0, "The rest of a reply just begun.", index=1)
    left = {0: 100, 1: 0}

    def pick() -> Voice:
        item = schedule.pick(lambda voice: left[voice.slot], lambda voice: 64, first_words_grace=150)
        assert item is not None
        return item.job.voice

    assert pick().slot == 0  # 100 ms from a stall: before the answer
    left[0] = 400
    assert pick().slot == 1  # 400 ms of audio still to play: the answer first
    # Without the grace, the least audio left goes first, whatever it is.
    left[0] = 100
    item = schedule.pick(lambda voice: left[voice.slot], lambda voice: 64)
    assert item is not None and item.job.voice.slot == 1
