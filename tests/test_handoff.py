"""Hand-off to a person: asking for one (a key, or words), the line, then Twilio's REST redirect; no one set; Twilio
refusing. The conductor with a fake clock, and the REST request through Twilio's client with a recording HTTP client."""

from __future__ import annotations

import pytest

from engine.conductor import Conductor, Phase
from engine.conductor_io import (
    Action,
    AudioStarted,
    Connected,
    KeyPressed,
    MarkPlayed,
    Note,
    PrepareReply,
    RequestReply,
    Speak,
    Tick,
    Transfer,
    TransferFailed,
)
from engine.config import ConversationSection
from engine.handoff import TransferError, asks_for_person, dial_twiml, put_through
from ipc.schema import Spoken, Transcript
from tests.test_outbound import RecordingHttpClient

CALL = "CA-test"
PERSON = "+15550009999"
LINE = "Connecting you to a person now. Please hold."


def said(text: str) -> Transcript:
    return Transcript(call_id=CALL, turn=1, text=text, final=True, speech_end_t_ns=0, audio_ms=0, stt_ms=0)


def spoken(gen: int, first: int, text: str) -> Spoken:
    return Spoken(call_id=CALL, gen=gen, index=0, seq_first=first, seq_last=first + 9, text=text, last=True)


def acts(actions: list[Action]) -> list[Action]:
    return [a for a in actions if not isinstance(a, Note | PrepareReply)]


def test_phrases_match_whole_words_ignoring_case_and_punctuation() -> None:
    phrases = ConversationSection().transfer_phrases
    assert asks_for_person("Can I SPEAK to a person, please?", phrases) == "speak to a person"
    assert asks_for_person("I want a real-person now", phrases) == "real person"
    assert asks_for_person("Put me through to the operator.", phrases) == "the operator"
    assert asks_for_person("I'd like a table for two.", phrases) is None
    assert asks_for_person("The agents of change", phrases) is None  # "an agent" is not in "agents"
    assert asks_for_person("anything", ["", "  "]) is None


def test_pressing_zero_alone_says_the_line_then_puts_the_call_through() -> None:
    c = Conductor(ConversationSection(greeting="", transfer_to=PERSON), 0.0)
    c.handle(Connected(), 0.0)
    assert acts(c.handle(KeyPressed("0"), 1.0)) == []  # a number may follow: wait for '#' or a pause
    assert acts(c.handle(KeyPressed("#"), 1.2)) == [Speak(1, LINE)]
    assert c.phase is Phase.ENDING
    assert acts(c.handle(said("wait, what?"), 1.5)) == []  # the line is not interrupted
    c.handle(spoken(1, 0, LINE), 1.3)
    c.handle(AudioStarted(1), 1.4)
    assert acts(c.handle(MarkPlayed(9), 4.0)) == [Transfer(PERSON)]  # once the line has played


def test_a_number_keyed_in_that_starts_with_zero_is_a_number() -> None:
    c = Conductor(ConversationSection(greeting="", transfer_to=PERSON), 0.0)
    for key in "012":
        c.handle(KeyPressed(key), 1.0)
    assert acts(c.handle(KeyPressed("#"), 1.2)) == [RequestReply(1, caller_text="[pressed on the keypad: 0 1 2]")]


def test_asking_in_words_interrupts_the_bot_and_is_answered_by_the_transfer() -> None:
    c = Conductor(ConversationSection(greeting="Hello, how can I help?", transfer_to=PERSON), 0.0)
    c.handle(Connected(), 0.0)
    c.handle(spoken(1, 0, "Hello, how can I help?"), 0.2)
    c.handle(AudioStarted(1), 0.3)
    actions = c.handle(said("I want to talk to a person."), 1.0, 4)
    assert [type(a).__name__ for a in acts(actions)] == ["Clear", "CancelReply", "ReportHeard", "Speak"]
    assert acts(actions)[-1] == Speak(2, LINE)
    assert Note("transfer", 1, 'said "talk to a person"') in actions


def test_the_line_not_finishing_does_not_stop_the_transfer() -> None:
    c = Conductor(ConversationSection(greeting="", transfer_to=PERSON, ending_timeout_s=5), 0.0)
    c.handle(Connected(), 0.0)
    c.handle(said("Get me an agent."), 1.0)
    assert acts(c.handle(Tick(), 7.0)) == [Transfer(PERSON)]


def test_with_no_one_to_put_through_to_the_caller_hears_why_and_the_call_goes_on() -> None:
    c = Conductor(ConversationSection(greeting="", transfer_to=""), 0.0)
    c.handle(Connected(), 0.0)
    actions = c.handle(said("Let me speak to a human."), 1.0)
    assert acts(actions) == [Speak(1, ConversationSection().transfer_unavailable)]
    c.handle(spoken(1, 0, "..."), 1.1)
    c.handle(AudioStarted(1), 1.2)
    assert [type(a) for a in acts(c.handle(MarkPlayed(9), 3.0))] == []  # played: listening again, no hang-up
    assert c.phase is Phase.LISTENING
    assert acts(c.handle(said("OK, a table then."), 4.0)) == [RequestReply(2, caller_text="OK, a table then.")]


def test_when_twilio_refuses_the_caller_hears_so_and_stays_with_the_bot() -> None:
    c = Conductor(ConversationSection(greeting="", transfer_to=PERSON), 0.0)
    c.handle(Connected(), 0.0)
    c.handle(said("operator please, the operator"), 1.0)
    c.handle(spoken(1, 0, LINE), 1.1)
    c.handle(AudioStarted(1), 1.2)
    assert acts(c.handle(MarkPlayed(9), 3.0)) == [Transfer(PERSON)]
    assert acts(c.handle(TransferFailed("HTTP 400"), 3.5)) == [Speak(2, ConversationSection().transfer_failed)]
    assert c.phase is Phase.THINKING  # an apology, then the conversation goes on
    assert acts(c.handle(TransferFailed("again"), 3.6)) == []  # only a transfer under way can fail


def test_the_rest_request_redirects_the_live_call_to_dial_twiml() -> None:
    http = RecordingHttpClient(status=200)
    put_through("AC" + "0" * 32, "secret", "CA" + "1" * 32, PERSON, http_client=http)
    (req,) = http.requests
    assert req["method"] == "POST" and req["uri"].endswith(f"/Accounts/AC{'0' * 32}/Calls/CA{'1' * 32}.json")
    assert req["data"]["Twiml"] == dial_twiml(PERSON) and f"<Number>{PERSON}</Number>" in req["data"]["Twiml"]
    assert "<Sip>sip:desk@example.com</Sip>" in dial_twiml("sip:desk@example.com")


def test_twilio_refusing_or_no_credentials_is_a_transfer_error() -> None:
    with pytest.raises(TransferError, match="refused"):
        put_through("AC" + "0" * 32, "secret", "CA1", PERSON, http_client=RecordingHttpClient(status=404))
    with pytest.raises(TransferError, match="account_sid"):
        put_through("", "", "CA1", PERSON)
