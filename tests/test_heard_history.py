"""The call's dialogue the conductor keeps for a restarted LLM: it is the LLM's own, turn for turn.

A conductor and the LLM process's `Thinking` are wired here as the transport wires them (its actions become
the LLM's bus messages, the replies made become the TTS's spans); no process, socket or model.
"""

from __future__ import annotations

from engine.conductor import Conductor
from engine.conductor_io import (
    Action,
    AudioStarted,
    CancelReply,
    CommitReply,
    Connected,
    Event,
    MarkPlayed,
    PeerRestarted,
    ReportHeard,
    RequestReply,
    RestoreHistory,
    Speak,
)
from engine.config import ConversationSection
from engine.heard_history import HeardHistory
from engine.llm import Messages, OnDelta
from engine.thinking import Mind, Reply, ReplyJob, Thinking, generate
from ipc.schema import (
    CallStarted,
    Cancel,
    Commit,
    Heard,
    History,
    HistoryTurn,
    Respond,
    Sentence,
    SpeechStarted,
    SpeechSustained,
    Spoken,
    Transcript,
)

CALL = "CA-h"


class SaysLlm:
    """A test backend, not a model: says the text it was given, a word per delta."""

    def __init__(self, text: str) -> None:
        self.text = text

    def stream(self, messages: Messages, on_delta: OnDelta, max_tokens: int, slot: int | None = None) -> None:
        for i, word in enumerate(self.text.split()):
            if on_delta(word if i == 0 else " " + word):
                return


class Line:
    """One call: its conductor, and the LLM process (restartable) that hears what the transport would send."""

    def __init__(self, greeting: str = "") -> None:
        self.cfg = ConversationSection(greeting=greeting)
        self.conductor = Conductor(self.cfg, 0.0)
        self.thinking = self._llm_started()
        self.jobs: dict[int, ReplyJob] = {}
        self.seq = 0
        self.last_seq: dict[int, int] = {}
        self.restored: list[tuple[HistoryTurn, ...]] = []
        self.spoken: list[str] = []

    def _llm_started(self) -> Thinking:
        thinking = Thinking("sys")
        thinking.handle(CallStarted(call_id=CALL, slot=0, epoch=1, inbound_rate=16000))  # the supervisor's replay
        return thinking

    def feed(self, event: Event, now: float, played: int | None = None) -> list[Action]:
        actions = self.conductor.handle(event, now, played)
        for a in actions:
            if isinstance(a, RequestReply):
                (job,) = self.thinking.handle(Respond(call_id=CALL, gen=a.gen, caller_text=a.caller_text, say=a.say,
                                                      provisional=a.provisional))
                self.jobs[a.gen] = job
            elif isinstance(a, ReportHeard):
                self.thinking.handle(Heard(call_id=CALL, gen=a.gen, text=a.text))
            elif isinstance(a, CommitReply):
                self.thinking.handle(Commit(call_id=CALL, gen=a.gen))
            elif isinstance(a, CancelReply):
                self.thinking.handle(Cancel(call_id=CALL, gen=a.gen))
            elif isinstance(a, RestoreHistory):
                self.restored.append(a.turns)
                self.thinking.handle(History(call_id=CALL, turns=list(a.turns)))
            elif isinstance(a, Speak):
                self.spoken.append(a.text)
        return actions

    def make(self, gen: int, text: str, now: float) -> None:
        """The LLM makes reply `gen` (saying `text`), the TTS speaks it a span per sentence, its audio starts."""
        outs: list[object] = []
        generate(Reply(self.jobs.pop(gen)), SaysLlm(text), 100, outs.append)
        pieces = [o.text for o in outs if isinstance(o, Sentence) and o.text]
        for i, piece in enumerate(pieces):
            self.feed(Spoken(call_id=CALL, gen=gen, index=i, seq_first=self.seq, seq_last=self.seq + 9, text=piece,
                             last=i == len(pieces) - 1), now)
            self.seq += 10
        self.last_seq[gen] = self.seq - 1
        self.feed(AudioStarted(gen), now)

    def plays_out(self, gen: int, now: float) -> None:
        for seq in range(9, self.last_seq[gen] + 1, 10):
            self.feed(MarkPlayed(seq), now)

    def says(self, text: str, now: float) -> None:
        self.feed(Transcript(call_id=CALL, turn=1, text=text, final=True, speech_end_t_ns=0, audio_ms=0, stt_ms=0),
                  now)

    def barges_in(self, now: float, played: int) -> None:
        self.feed(SpeechStarted(call_id=CALL, turn=1, onset_t_ns=0), now, played)
        self.feed(SpeechSustained(call_id=CALL, turn=1), now, played)

    def restart_llm(self, now: float, played: int | None = None) -> list[Action]:
        self.thinking = self._llm_started()
        self.jobs.clear()
        return self.feed(PeerRestarted("llm"), now, played)

    def llm_dialogue(self) -> list[tuple[str, str, int | None, bool]]:
        call = self.thinking.calls.find(CALL)
        assert call is not None
        mind: Mind = call.state
        return [(t.role, t.text, t.gen, t.interrupted) for t in mind.dialogue.turns]

    def kept(self) -> list[tuple[str, str, int | None, bool]]:
        return [(t.role, t.text, t.gen, t.interrupted) for t in self.conductor.history.turns()]


def test_the_dialogue_kept_is_the_llms_and_a_restarted_llm_goes_on_from_it() -> None:
    line = Line(greeting="Hi there.")
    line.feed(Connected(), 0.0)
    line.make(1, "Hi there.", 0.1)
    line.plays_out(1, 1.0)
    line.says("What is two plus two?", 2.0)
    line.make(2, "It is four.", 2.5)
    line.plays_out(2, 3.0)
    line.says("Tell me a story.", 4.0)
    line.make(3, "Once upon a time, a fox. It ran far away.", 4.5)
    line.feed(MarkPlayed(line.last_seq[2] + 10), 5.0)  # its first sentence played
    line.barges_in(5.2, played=line.last_seq[2] + 20)  # and, by the play-out clock, the second
    line.says("Stop. What time is it?", 6.0)  # reply 4 asked for: the LLM is making it
    assert line.kept() == line.llm_dialogue() == [
        ("assistant", "Hi there.", 1, False), ("user", "What is two plus two?", None, False),
        ("assistant", "It is four.", 2, False), ("user", "Tell me a story.", None, False),
        ("assistant", "Once upon a time, a fox.", 3, True), ("user", "Stop. What time is it?", None, False)]
    before = line.llm_dialogue()

    actions = line.restart_llm(6.5)  # it died making reply 4: the new one gets the dialogue, then the question
    assert isinstance(actions[0], RestoreHistory)
    assert [t.text for t in actions[0].turns][-1] == "Once upon a time, a fox."  # the question is asked again
    assert actions[-1] == RequestReply(5, caller_text="Stop. What time is it?")
    assert line.llm_dialogue() == before == line.kept()
    line.make(5, "It is noon.", 7.0)
    line.plays_out(5, 8.0)
    assert line.llm_dialogue() == line.kept() == [*before, ("assistant", "It is noon.", 5, False)]


def test_an_llm_restart_mid_reply_gives_the_new_llm_the_dialogue_then_what_was_heard() -> None:
    line = Line()
    line.says("Tell me a story.", 1.0)
    line.make(1, "Once upon a time, a fox. It ran far away.", 1.5)
    line.feed(MarkPlayed(9), 2.0)
    actions = line.restart_llm(2.1, played=12)  # 3 of "a fox."'s 10 frames: "a" was heard (reply_track.words_within)
    assert actions[0] == RestoreHistory((HistoryTurn(role="user", text="Tell me a story."),))
    assert ReportHeard(1, "Once upon a time, a") in actions and line.spoken == [line.cfg.apology]
    assert line.llm_dialogue() == line.kept() == [("user", "Tell me a story.", None, False),
                                                  ("assistant", "Once upon a time, a", 1, True)]


def test_after_a_reply_nobody_heard_the_callers_merged_words_are_asked_again_once() -> None:
    line = Line()
    line.says("Hello?", 1.0)
    line.barges_in(1.1, played=None)  # before any audio: nothing heard, no assistant turn
    line.says("Anyone there?", 2.0)
    assert line.llm_dialogue() == line.kept() == [("user", "Hello? Anyone there?", None, False)]
    actions = line.restart_llm(2.5)
    assert actions[0] == RestoreHistory((HistoryTurn(role="user", text="Hello?"),))  # the rest is asked again
    assert actions[-1] == RequestReply(3, caller_text="Anyone there?")
    assert line.llm_dialogue() == line.kept() == [("user", "Hello? Anyone there?", None, False)]


def test_a_line_the_transport_had_spoken_is_no_part_of_the_llms_dialogue() -> None:
    line = Line()
    line.says("Hi.", 1.0)
    line.feed(PeerRestarted("tts"), 1.5)  # nothing played yet; reply 1 given up for an apology said by the TTS
    assert line.spoken == [line.cfg.apology]
    gen = line.conductor.gen
    line.feed(Spoken(call_id=CALL, gen=gen, index=0, seq_first=0, seq_last=9, text=line.cfg.apology, last=True), 2.0)
    line.feed(MarkPlayed(9), 3.0)
    assert line.llm_dialogue() == line.kept() == [("user", "Hi.", None, False)]


def test_the_history_handed_over_is_bounded_latest_turns_first() -> None:
    history = HeardHistory(max_turns=6, max_chars=30)
    for gen in range(1, 6):
        history.asked(f"question {gen}")
        history.played(gen, f"answer {gen}")
    assert [t.text for t in history.turns()] == ["answer 4", "question 5", "answer 5"]  # 30 chars at most
    history = HeardHistory(max_turns=6)
    for gen in range(1, 6):
        history.asked(f"question {gen}")
        history.played(gen, f"answer {gen}")
    assert len(history.turns()) == 6


def test_a_history_that_overtook_the_calls_start_is_applied_when_it_starts() -> None:
    thinking = Thinking("sys")
    turns = [HistoryTurn(role="user", text="Hello?"), HistoryTurn(role="assistant", text="Hi.", gen=1)]
    thinking.handle(History(call_id=CALL, turns=turns))  # the transport's, before the supervisor's CallStarted
    thinking.handle(CallStarted(call_id=CALL, slot=0, epoch=1, inbound_rate=16000))
    (job,) = thinking.handle(Respond(call_id=CALL, gen=2, caller_text="How are you?"))
    assert job.messages == [{"role": "system", "content": "sys"}, {"role": "user", "content": "Hello?"},
                            {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "How are you?"}]


def test_a_reply_asked_for_before_the_replayed_call_start_is_made_once_it_starts() -> None:
    """CI caught it: a restarted LLM took the transport's History and Respond before the supervisor's replayed
    CallStarted (another sender) and dropped the Respond; the caller waited 10 s for "Sorry, I ran into a problem"."""
    thinking = Thinking("sys")
    turns = [HistoryTurn(role="user", text="Hello?"), HistoryTurn(role="assistant", text="Hi.", gen=1)]
    assert thinking.handle(History(call_id=CALL, turns=turns)) == []
    assert thinking.handle(Respond(call_id=CALL, gen=2, caller_text="How are you?")) == []
    assert thinking.handle(Cancel(call_id=CALL, gen=2)) == []  # the caller barged in: it is made, and stopped
    assert thinking.handle(Respond(call_id=CALL, gen=3, caller_text="Are you there?")) == []
    cancelled, job = thinking.handle(CallStarted(call_id=CALL, slot=0, epoch=1, inbound_rate=16000))
    assert (cancelled.gen, job.gen) == (2, 3)
    assert cancelled.gen in cancelled.mind.cancelled and job.gen not in job.mind.cancelled
    assert job.messages == [{"role": "system", "content": "sys"}, {"role": "user", "content": "Hello?"},
                            {"role": "assistant", "content": "Hi."},
                            {"role": "user", "content": "How are you? Are you there?"}]  # one turn: 2 was never heard
