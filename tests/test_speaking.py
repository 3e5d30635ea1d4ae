"""The TTS process's logic with no process, ring or model: a tone backend, and a list for a ring."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from engine.codec import Pcm16
from engine.line_cache import Line, LineCache
from engine.piper_stream import Plan
from engine.speaking import SentenceJob, Speaking, Stage, speak
from ipc.ring import FLAG_END, FLAG_MARK, flags_gen, gen_flags
from ipc.schema import CallEnded, CallStarted, Cancel, Sentence, Spoken

RATE = 16000
FRAME = RATE // 50


class ToneTts:
    """A test backend, not a voice: each word is 0.1 s of a tone, handed over in uneven chunks (as a real
    vocoder's are); it records whether the synthesis was closed early."""

    sample_rate = RATE

    def __init__(self) -> None:
        self.closed_early = False

    def synthesize(self, text: str) -> Iterator[Pcm16]:
        t = np.arange(len(text.split()) * RATE // 10)
        audio = (8000 * np.sin(2 * np.pi * 440 * t / RATE)).astype(np.int16)
        done = False
        try:
            for start in range(0, len(audio), 777):
                yield audio[start:start + 777]
            done = True
        finally:
            self.closed_early = not done


class ListRing:
    """Frames as the transport would read them from the ring: (seq, samples, flags)."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, Pcm16, int]] = []

    def write(self, samples: Pcm16, flags: int) -> int:
        self.frames.append((len(self.frames), samples, flags))
        return len(self.frames) - 1


def call(speaking: Speaking, call_id: str = "CA1") -> None:
    assert speaking.handle(CallStarted(call_id=call_id, slot=0, epoch=1, inbound_rate=16000)) == []


def sentence(text: str, index: int = 0, gen: int = 1, last: bool = False, call_id: str = "CA1") -> Sentence:
    return Sentence(call_id=call_id, gen=gen, index=index, text=text, last=last)


def job_for(speaking: Speaking, s: Sentence) -> SentenceJob:
    jobs = speaking.handle(s)
    assert len(jobs) == 1
    return jobs[0]


def test_a_sentence_becomes_20ms_frames_stamped_with_its_reply_and_a_span() -> None:
    speaking, ring, tts = Speaking(), ListRing(), ToneTts()
    call(speaking)
    outs: list[Spoken | Stage] = []
    s0, s1 = sentence("Thank you for calling.", 0), sentence("Goodbye now.", 1, last=True)
    assert speak(job_for(speaking, s0), tts, ring.write, outs.append) == "spoken"
    assert speak(job_for(speaking, s1), tts, ring.write, outs.append) == "spoken"
    assert all(len(samples) == FRAME for _, samples, _ in ring.frames)
    assert all(flags_gen(flags) == 1 for _, _, flags in ring.frames)
    spans = [o for o in outs if isinstance(o, Spoken)]
    assert [(s.index, s.text, s.last) for s in spans] == [(0, s0.text, False), (1, s1.text, True)]
    assert spans[0].seq_first == 0 and spans[1].seq_first == spans[0].seq_last + 1
    assert spans[1].seq_last == len(ring.frames) - 1
    marks = [seq for seq, _, flags in ring.frames if flags & FLAG_MARK]
    assert marks == [spans[0].seq_last, spans[1].seq_last]  # a mark after each sentence...
    assert [seq for seq, _, flags in ring.frames if flags & FLAG_END] == [spans[1].seq_last]  # ...the end once
    first = np.concatenate([samples for seq, samples, _ in ring.frames if seq <= spans[0].seq_last])
    spoken = np.concatenate(list(ToneTts().synthesize(s0.text)))
    assert np.array_equal(first[:len(spoken)], spoken) and not first[len(spoken):].any()  # padded with silence
    assert [o.name for o in outs if isinstance(o, Stage)] == ["tts_start", "tts_first_audio"]


def test_a_cancel_stops_the_sentence_within_a_frame_and_closes_the_synthesis() -> None:
    speaking, ring, tts = Speaking(), ListRing(), ToneTts()
    call(speaking)
    job = job_for(speaking, sentence("one two three four five six seven eight", last=True))

    def write(samples: Pcm16, flags: int) -> int:
        seq = ring.write(samples, flags)
        if seq == 4:
            speaking.handle(Cancel(call_id="CA1", gen=1))
        return seq

    outs: list[Spoken | Stage] = []
    assert speak(job, tts, write, outs.append) == "stopped"
    assert len(ring.frames) == 5 and not any(flags & FLAG_MARK for _, _, flags in ring.frames)
    assert not any(isinstance(o, Spoken) for o in outs)
    assert tts.closed_early
    assert speaking.handle(sentence("more", index=1)) == []  # later sentences of a cancelled reply are dropped


def test_an_empty_last_sentence_is_one_silent_frame_that_ends_the_reply() -> None:
    speaking, ring = Speaking(), ListRing()
    call(speaking)
    outs: list[Spoken | Stage] = []
    speak(job_for(speaking, sentence("", index=2, last=True)), ToneTts(), ring.write, outs.append)
    [(_, samples, flags)] = ring.frames
    assert not samples.any() and flags == gen_flags(1) | FLAG_MARK | FLAG_END
    assert next(o for o in outs if isinstance(o, Spoken)).text == ""


def test_first_audio_is_stamped_once_per_reply() -> None:
    speaking, ring = Speaking(), ListRing()
    call(speaking)
    outs: list[Spoken | Stage] = []
    for s in (sentence("Hello.", 0, gen=1), sentence("Again.", 1, gen=1), sentence("Next.", 0, gen=2)):
        speak(job_for(speaking, s), ToneTts(), ring.write, outs.append)
    stages = [o.name for o in outs if isinstance(o, Stage)]
    assert stages == ["tts_start", "tts_first_audio", "tts_start", "tts_first_audio"]


def test_what_arrives_before_its_call_starts_is_held_until_it_does() -> None:
    speaking = Speaking()
    # The LLM's sentence for a new call can overtake the transport's CallStarted (two senders), and a Cancel
    # overtakes anything.
    assert speaking.handle(sentence("Hello.", 0, gen=1)) == []
    assert speaking.handle(Cancel(call_id="CA1", gen=2)) == []
    assert speaking.handle(sentence("Stale.", 0, gen=2)) == []
    jobs = speaking.handle(CallStarted(call_id="CA1", slot=0, epoch=1, inbound_rate=16000))
    assert [(j.sentence.gen, j.sentence.text) for j in jobs] == [(1, "Hello.")]


def test_a_call_that_ends_stops_its_speech() -> None:
    speaking, ring = Speaking(), ListRing()
    call(speaking)
    job = job_for(speaking, sentence("one two three", last=True))
    speaking.handle(CallEnded(call_id="CA1", slot=0, epoch=1, reason="hung up"))
    assert speak(job, ToneTts(), ring.write, lambda o: None) == "stopped" and ring.frames == []


class PlannedToneTts(ToneTts):
    """The tone backend, saying first how long each sentence will be (as the streaming Piper voice does)."""

    def planned(self, text: str) -> Plan:
        """Each word a tenth of a second: the first half sounding, the second silent."""
        words = [(i * RATE // 10, i * RATE // 10 + RATE // 20) for i in range(len(text.split()))]
        return Plan(len(text.split()) * RATE // 10, words, self.synthesize(text))


def test_a_planned_sentence_is_told_with_its_first_frame_so_a_cut_mid_sentence_is_known() -> None:
    """The span went out only after a sentence's last frame: a caller cutting in while a long sentence was still
    being written had heard none of it, as far as the engine knew. A backend that knows the length up front lets
    the span go with the first frame, and it names exactly the frames that follow."""
    speaking, ring, tts = Speaking(), ListRing(), PlannedToneTts()
    call(speaking)
    outs: list[Spoken | Stage] = []
    told_at: list[int] = []

    def emit(out: Spoken | Stage) -> None:
        if isinstance(out, Spoken):
            told_at.append(len(ring.frames))
        outs.append(out)

    s0 = sentence("One two three four five six seven eight nine ten eleven twelve thirteen.", 0, last=True)
    assert speak(job_for(speaking, s0), tts, ring.write, emit) == "spoken"
    spans = [o for o in outs if isinstance(o, Spoken)]
    assert len(spans) == 1  # once, not again at the end
    assert (spans[0].seq_first, spans[0].seq_last) == (0, len(ring.frames) - 1)
    assert told_at == [1]  # right behind the first frame: the ring held one frame when it went out
    assert spans[0].words_ms[:3] == [(0, 50), (100, 150), (200, 250)]  # where each word is, for a cut mid-way


def test_a_reply_cut_mid_sentence_reports_the_words_within_the_played_share() -> None:
    from engine.reply_track import words_within

    text = "A cat in the neighbor's house is a common story."
    assert words_within(text, 0.0) == []
    assert words_within(text, 0.5) == ["A", "cat", "in", "the", "neighbor's"]  # 24.5 of 49 characters
    assert words_within(text, 0.58) == ["A", "cat", "in", "the", "neighbor's", "house"]  # past the middle of "house"
    assert words_within(text, 1.0) == text.split()


def test_with_the_voices_word_times_a_cut_reports_the_words_whose_middle_played() -> None:
    """Letters spread evenly over a sentence's frames misplace words where the voice lingers (a comma's pause, a
    long word); the voice's own durations say where each word is."""
    from engine.reply_track import ReplyTrack, Span, heard_words

    text = "Paris, a city of light."
    timed = ((0, 400), (900, 960), (1000, 1300), (1320, 1400), (1420, 1800))  # a long pause after "Paris,"
    reply = ReplyTrack(1, 0.0)
    reply.add(Span(0, 100, 194, text, True, words_ms=timed))  # 95 frames: 1.9 s
    assert heard_words(reply, 100 + 44) == "Paris,"  # 900 ms in: only the pause after "Paris," has played
    assert heard_words(reply, 100 + 46) == "Paris, a"  # 940 ms: past the middle of "a"
    untimed = ReplyTrack(1, 0.0)
    untimed.add(Span(0, 100, 194, text, True))
    assert heard_words(untimed, 100 + 44) == "Paris, a"  # by letters (47% of them): a word the caller never heard


class CountingTts(PlannedToneTts):
    """The planned tone backend, counting the sentences it is asked to make."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[str] = []

    def planned(self, text: str) -> Plan:
        self.made.append(text)
        return super().planned(text)


def fixed(text: str, call_id: str, gen: int = 1) -> Sentence:
    return Sentence(call_id=call_id, gen=gen, index=0, text=text, last=True, fixed=True)


def test_a_fixed_lines_audio_is_made_once_and_every_later_call_gets_it_planned() -> None:
    """Every call opens with the same greeting: its audio is kept once spoken whole, and a later call hears the
    same audio with its span (and word times) told with the first frame, with no synthesis."""
    speaking, tts, lines = Speaking(), CountingTts(), LineCache(1 << 20)
    heard: dict[str, list[Pcm16]] = {}
    spans: dict[str, list[Spoken]] = {}
    for n, call_id in enumerate(("CA1", "CA2", "CA3")):
        assert speaking.handle(CallStarted(call_id=call_id, slot=n, epoch=1, inbound_rate=16000)) == []
        ring, outs = ListRing(), []
        assert speak(job_for(speaking, fixed("Hello! How can I help?", call_id)), tts, ring.write, outs.append,
                     lines) == "spoken"
        heard[call_id] = [samples for _, samples, _ in ring.frames]
        spans[call_id] = [o for o in outs if isinstance(o, Spoken)]
    assert tts.made == ["Hello! How can I help?"]
    assert lines.hits == 2 and len(lines) == 1
    for call_id in ("CA2", "CA3"):
        assert np.array_equal(np.concatenate(heard[call_id]), np.concatenate(heard["CA1"]))
        assert [(s.seq_first, s.seq_last, s.words_ms) for s in spans[call_id]] == \
            [(s.seq_first, s.seq_last, s.words_ms) for s in spans["CA1"]]


def test_a_backend_that_cannot_plan_is_planned_from_its_kept_line() -> None:
    """A voice that cannot say a sentence's length up front (espeak, CSM) tells its span after the last frame;
    a kept line's length is known, so its span goes with its first frame."""
    speaking, lines = Speaking(), LineCache(1 << 20)
    call(speaking)
    for gen in (1, 2):
        ring = ListRing()
        told_after: list[int] = []  # frames written when the span went out
        speak(job_for(speaking, fixed("Are you still there?", "CA1", gen=gen)), ToneTts(), ring.write,
              lambda o, r=ring, t=told_after: t.append(len(r.frames)) if isinstance(o, Spoken) else None, lines)
        assert told_after == ([len(ring.frames)] if gen == 1 else [1])


def test_only_fixed_lines_spoken_whole_are_kept() -> None:
    speaking, tts, lines = Speaking(), CountingTts(), LineCache(1 << 20)
    call(speaking)
    ring = ListRing()
    # The model's own words are not kept (they seldom come twice, and would crowd the lines out).
    speak(job_for(speaking, sentence("one two three", gen=1)), tts, ring.write, lambda o: None, lines)
    speak(job_for(speaking, sentence("one two three", gen=2)), tts, ring.write, lambda o: None, lines)
    assert tts.made == ["one two three"] * 2 and len(lines) == 0

    ring = ListRing()

    def cancel_at_4(samples: Pcm16, flags: int) -> int:
        seq = ring.write(samples, flags)
        if seq == 4:
            speaking.handle(Cancel(call_id="CA1", gen=3))
        return seq

    job = job_for(speaking, fixed("one two three four five six seven eight", "CA1", gen=3))
    assert speak(job, tts, cancel_at_4, lambda o: None, lines) == "stopped"
    assert tts.closed_early and len(lines) == 0  # cut short: not kept, and the synthesis was closed


def test_the_line_cache_keeps_to_its_bytes_dropping_the_least_recently_spoken() -> None:
    def line(samples: int) -> Line:
        return Line(np.zeros(samples, np.int16), None)

    lines = LineCache(1000)
    lines.put("a", line(200))  # 400 bytes
    lines.put("b", line(200))
    assert lines.get("a") is not None  # "b" is now the least recently spoken
    lines.put("c", line(200))
    assert lines.get("b") is None and lines.get("a") is not None and lines.get("c") is not None
    assert lines.bytes == 800
    lines.put("d", line(600))  # larger than the whole cache: not kept, nothing dropped for it
    assert lines.get("d") is None and len(lines) == 2 and lines.bytes == 800
    lines.put("a", line(100))  # a line said anew replaces its old audio
    assert lines.bytes == 600 and len(lines.get("a").audio) == 100  # type: ignore[union-attr]
