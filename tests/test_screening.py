"""Calls we place: who answered (Twilio's answering-machine detection) decides how the conversation starts.

The conductor driven event by event with a fake clock, as in tests/test_conductor.py; and the results kept for
calls whose stream has not started yet."""

from __future__ import annotations

import pytest

from engine.conductor import Conductor, Phase
from engine.conductor_io import Answered, Connected, HangUp, MarkPlayed, Note, RequestReply, Speak, Tick
from engine.config import ConversationSection
from engine.screening import MARGIN_S, PendingAnswers
from tests.test_conductor import kinds, play_reply, said, started, sustained

GREETING = "Hi, this is the clinic calling."
VOICEMAIL = "This is the clinic: please call us back about your appointment."


def screened(answered: str = "", voicemail: str = VOICEMAIL) -> tuple[Conductor, list[object]]:
    """A call we placed, just connected; the conductor and what it did on connecting."""
    c = Conductor(ConversationSection(greeting=GREETING, voicemail_message=voicemail,
                                      machine_detection_timeout_s=10), 0.0)
    return c, list(c.handle(Connected(screen=True, answered=answered), 0.0))


def test_nothing_is_said_or_answered_until_twilio_says_who_answered() -> None:
    c, actions = screened()
    assert actions == [] and c.phase is Phase.SCREENING
    # "Hello? Hello?": not answered, not even a reply prepared, however long it takes (within the timeout).
    for t in (0.5, 1.0, 9.0):
        assert c.handle(started(), t) == [] and c.handle(sustained(), t) == []
        assert c.handle(said("Hello? Who is this?"), t) == []
        assert c.handle(Tick(), t) == []
    actions = c.handle(Answered("human"), 9.5)
    assert kinds(actions) == ["RequestReply"] and actions[-1] == RequestReply(1, say=GREETING)
    assert c.phase is Phase.THINKING
    # From here on it is a conversation as usual.
    play_reply(c, 1, [GREETING], 10.0)
    c.handle(MarkPlayed(9), 11.0)
    assert c.handle(said("Oh hi, yes."), 12.0) == [RequestReply(2, caller_text="Oh hi, yes.")]


def test_when_twilio_cannot_tell_it_is_taken_for_a_person() -> None:
    c, _ = screened()
    assert c.handle(Answered("unknown"), 3.0)[-1] == RequestReply(1, say=GREETING)


@pytest.mark.parametrize("machine", ["machine_end_beep", "machine_end_silence", "machine_end_other"])
def test_a_machine_gets_the_voicemail_message_after_its_greeting_then_a_hang_up(machine: str) -> None:
    c, _ = screened()
    actions = c.handle(Answered(machine), 6.0)
    assert kinds(actions) == ["Speak"] and actions[-1] == Speak(1, VOICEMAIL)  # verbatim, no LLM
    assert c.phase is Phase.ENDING
    # The machine records; anything it hears meanwhile neither interrupts the message nor is answered.
    play_reply(c, 1, ["This is the clinic:", "please call us back about your appointment."], 6.2)
    assert kinds(c.handle(started(), 7.0) + c.handle(sustained(), 7.0) + c.handle(said("beep"), 7.5)) == []
    assert c.handle(MarkPlayed(9), 8.0) == []
    assert c.handle(MarkPlayed(19), 10.0) == [HangUp("said goodbye")]
    assert c.phase is Phase.ENDED


def test_a_fax_or_a_machine_with_no_message_to_leave_is_hung_up_on() -> None:
    c, _ = screened()
    actions = c.handle(Answered("fax"), 2.0)
    assert kinds(actions) == ["HangUp"] and c.phase is Phase.ENDED
    c, _ = screened(voicemail="")
    actions = c.handle(Answered("machine_end_beep"), 2.0)
    assert kinds(actions) == ["HangUp"] and c.phase is Phase.ENDED


def test_the_start_of_a_machines_greeting_waits_for_its_end() -> None:
    c, _ = screened()
    assert c.handle(Answered("machine_start"), 2.0) == [] and c.phase is Phase.SCREENING
    assert c.handle(Answered("machine_end_silence"), 8.0)[-1] == Speak(1, VOICEMAIL)


def test_no_result_in_time_means_a_person_and_a_late_one_changes_nothing() -> None:
    c, _ = screened()
    deadline = 10 + MARGIN_S
    assert c.handle(Tick(), deadline - 0.1) == []
    actions = c.handle(Tick(), deadline)
    assert kinds(actions) == ["RequestReply"] and actions[-1] == RequestReply(1, say=GREETING)
    assert any(isinstance(a, Note) and "in time" in a.what for a in actions)  # logged as such
    assert kinds(c.handle(Answered("machine_end_beep"), deadline + 1)) == []
    assert c.phase is Phase.THINKING


def test_a_second_result_changes_nothing() -> None:
    c, _ = screened()
    c.handle(Answered("human"), 2.0)
    assert kinds(c.handle(Answered("machine_end_beep"), 3.0)) == [] and c.phase is Phase.THINKING
    c, _ = screened()
    c.handle(Answered("machine_end_beep"), 2.0)
    assert kinds(c.handle(Answered("human"), 3.0)) == [] and c.phase is Phase.ENDING


def test_a_result_that_came_before_the_stream_decides_at_once() -> None:
    c, actions = screened(answered="machine_end_beep")
    assert kinds(actions) == ["Speak"] and actions[-1] == Speak(1, VOICEMAIL) and c.phase is Phase.ENDING
    c, actions = screened(answered="human")
    assert actions[-1] == RequestReply(1, say=GREETING) and c.phase is Phase.THINKING


def test_a_result_given_before_the_conversation_begins_waits_for_it() -> None:
    """The transport hands the result to a streaming call at once, and again (kept) when it connects."""
    c = Conductor(ConversationSection(greeting=GREETING, voicemail_message=VOICEMAIL), 0.0)
    assert c.handle(Answered("machine_end_beep"), 0.1) == [] and c.phase is Phase.LISTENING
    assert c.handle(Connected(screen=True, answered="machine_end_beep"), 0.2)[-1] == Speak(1, VOICEMAIL)


def test_a_call_that_is_not_screened_is_greeted_at_once() -> None:
    c = Conductor(ConversationSection(greeting=GREETING), 0.0)
    assert c.handle(Connected(), 0.0) == [RequestReply(1, say=GREETING)]
    assert kinds(c.handle(Answered("machine_end_beep"), 1.0)) == []  # not ours to act on


def test_results_are_kept_for_a_call_until_its_stream_starts_and_no_longer() -> None:
    kept = PendingAnswers(keep_s=60.0, most=3)
    kept.keep("CA1", "human", 0.0)
    assert kept.take("CA1", 1.0) == "human" and kept.take("CA1", 1.0) == ""  # taken once
    kept.keep("CA2", "machine_end_beep", 0.0)
    assert kept.take("CA2", 60.0) == ""  # lapsed
    kept.keep("CA3", "machine_start", 0.0)
    kept.keep("CA3", "machine_end_beep", 1.0)  # the end of the greeting follows its start
    kept.keep("CA3", "human", 2.0)  # a second decisive result changes nothing
    assert kept.take("CA3", 3.0) == "machine_end_beep"


def test_results_kept_are_bounded_and_lapse() -> None:
    kept = PendingAnswers(keep_s=10.0, most=3)
    for i in range(5):
        kept.keep(f"CA{i}", "human", float(i))
    assert len(kept) == 3 and kept.take("CA0", 5.0) == "" and kept.take("CA4", 5.0) == "human"
    kept.keep("CA9", "fax", 20.0)  # everything older than keep_s is forgotten
    assert len(kept) == 1
