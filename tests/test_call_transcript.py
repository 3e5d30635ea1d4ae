"""A call's transcript, built from a conductor driven event by event (as the transport feeds it), and the signature
on the call-end webhook. No process, socket or model."""

from __future__ import annotations

from typing import Any

from engine.call_transcript import CallTranscript, signature, signature_valid
from engine.conductor import Conductor
from engine.conductor_io import Action, AudioStarted, Connected, Event, HungUp, KeyPressed, MarkPlayed, Tick
from engine.config import ConversationSection
from ipc.schema import SpeechResumed, SpeechStarted, SpeechSustained, Spoken, Transcript

CALL = "CA-test"
START_UNIX = 1_780_000_000.0  # 2026-05-28T20:26:40Z


class Call:
    """A conductor and its transcript, fed together the way procs.phone_call does."""

    def __init__(self, **cfg: Any) -> None:
        self.conductor = Conductor(ConversationSection(**cfg), 100.0)
        self.transcript = CallTranscript(100.0, START_UNIX)

    def __call__(self, event: Event, now: float, played: int | None = None) -> list[Action]:
        actions = self.conductor.handle(event, now, played)
        self.transcript.observe(event, actions, now)
        return actions

    def spans(self, gen: int, texts: list[str], first_seq: int, now: float) -> None:
        for i, text in enumerate(texts):
            self(Spoken(call_id=CALL, gen=gen, index=i, seq_first=first_seq + 10 * i, seq_last=first_seq + 10 * i + 9,
                        text=text, last=i == len(texts) - 1), now)
        self(AudioStarted(gen), now)

    def says(self, text: str, now: float, speech_end: float, final: bool = True) -> list[Action]:
        self(SpeechStarted(call_id=CALL, turn=1, onset_t_ns=0), now)
        return self(Transcript(call_id=CALL, turn=1, text=text, final=final, speech_end_t_ns=int(speech_end * 1e9),
                               audio_ms=0, stt_ms=0), now)


def test_turns_say_what_was_said_and_what_the_caller_heard() -> None:
    call = Call(greeting="Hello there.", speculative_reply=False)
    call(Connected(), 100.0)
    call.spans(1, ["Hello there."], 0, 100.5)
    call(MarkPlayed(9), 101.5)  # the greeting played to its end
    call.says("Book a table.", 103.4, speech_end=103.0)
    call.spans(2, ["Sure, for when?", "We open at six."], 10, 104.0)
    call(MarkPlayed(19), 105.0)  # the first sentence played ...
    call(SpeechStarted(call_id=CALL, turn=2, onset_t_ns=0), 105.2, 19)
    call(SpeechSustained(call_id=CALL, turn=2), 105.3, 19)  # ... and the caller talked over the second
    call.says("Friday.", 106.2, speech_end=106.0)
    call(KeyPressed("5"), 106.5)  # a keypress cuts reply 3 short before a word of it played
    doc = call.transcript.document(108.0, "caller hung up (stop)", {}, call_sid=CALL)
    turns = doc["turns"]
    assert [(t.get("speaker"), t.get("text") or t.get("said") or t.get("keypress")) for t in turns] == [
        ("bot", "Hello there."), ("caller", "Book a table."), ("bot", "Sure, for when? We open at six."),
        ("caller", "Friday."), ("caller", "5")]
    greeting, _, answer, *_ = turns
    assert greeting["heard"] == "Hello there." and not greeting["interrupted"] and greeting["verbatim"]
    assert answer["heard"] == "Sure, for when?" and answer["interrupted"] and answer["interrupted_by"] == "barge-in"
    assert [t["t_s"] for t in turns] == [0.5, 3.0, 4.0, 6.0, 6.5]  # the caller's turn: when they stopped speaking
    assert doc["started_at"] == "2026-05-28T20:26:40.000+00:00" and doc["ended_at"] == "2026-05-28T20:26:48.000+00:00"
    assert doc["duration_s"] == 8.0 and doc["outcome"] == "caller hung up (stop)" and doc["barge_ins"] == 1
    assert doc["call_sid"] == CALL


def test_a_reply_playing_when_the_call_ends_keeps_what_was_heard_of_it() -> None:
    call = Call(greeting="", speculative_reply=False)
    call(Connected(), 100.0)
    call.says("Tell me a story.", 101.0, speech_end=100.8)
    call.spans(1, ["Once upon a time there was a knight."], 0, 101.5)
    call(HungUp(), 103.0)
    doc = call.transcript.document(103.0, "caller hung up (stop)", {1: "Once upon a time"})
    bot = doc["turns"][-1]
    assert bot["said"] == "Once upon a time there was a knight." and bot["heard"] == "Once upon a time"
    assert bot["interrupted"] and bot["interrupted_by"] == "the call ended" and "verbatim" not in bot


def test_a_discarded_provisional_reply_is_not_in_it_and_a_committed_one_is() -> None:
    call = Call(greeting="", speculative_reply=True)
    call(Connected(), 100.0)
    call.says("I'd like", 101.0, speech_end=100.9, final=False)  # a pause: a provisional reply starts
    call(SpeechResumed(call_id=CALL, turn=1), 101.2)  # the caller went on: it is dropped, never heard
    call.says("I'd like a taxi.", 102.0, speech_end=101.9, final=False)
    call.says("I'd like a taxi.", 102.5, speech_end=101.9)  # the turn ended as transcribed: committed
    call.spans(2, ["Where to?"], 0, 102.8)
    call(MarkPlayed(9), 103.5)
    turns = call.transcript.document(104.0, "caller hung up (stop)", {})["turns"]
    assert [(t["speaker"], t.get("text") or t.get("said")) for t in turns] == [
        ("caller", "I'd like a taxi."), ("bot", "Where to?")]
    assert turns[1]["gen"] == 2 and turns[1]["heard"] == "Where to?"


def test_backchannels_and_the_goodbye_are_marked() -> None:
    call = Call(greeting="Hi.", speculative_reply=False, barge_in_min_speech_ms=300, idle_reprompt_s=5,
                max_reprompts=0, goodbye="Goodbye.")
    call(Connected(), 100.0)
    call.spans(1, ["Hi."], 0, 100.2)
    call.says("mm-hm", 100.4, speech_end=100.3)  # said over the bot, too short to interrupt it
    call(MarkPlayed(9), 101.0)
    call(Tick(), 106.5)  # silent past the idle limit with no re-prompts left: goodbye
    call.spans(2, ["Goodbye."], 10, 106.8)
    call(MarkPlayed(19), 107.5)
    turns = call.transcript.document(107.6, "engine hung up: said goodbye", {})["turns"]
    assert turns[1] == {"t_s": 0.3, "speaker": "caller", "text": "mm-hm", "backchannel": True}
    assert turns[-2]["said"] == "Goodbye." and turns[-2]["heard"] == "Goodbye."
    assert turns[-1] == {"t_s": 7.5, "event": "hang-up", "reason": "said goodbye"}


def test_the_webhook_signature_covers_the_body_the_secret_and_the_time() -> None:
    body = b'{"call_sid": "CA1"}'
    header = signature("s" * 20, 1_780_000_000, body)
    assert header.startswith("t=1780000000,v1=")
    assert signature_valid("s" * 20, header, body, 1_780_000_100)
    assert not signature_valid("s" * 20, header, body + b" ", 1_780_000_100)
    assert not signature_valid("t" * 20, header, body, 1_780_000_100)
    assert not signature_valid("s" * 20, header, body, 1_780_000_000 + 301)  # replayed later: refused
    assert not signature_valid("s" * 20, "t=abc,v1=00", body, 1_780_000_000)
    assert not signature_valid("s" * 20, "", body, 1_780_000_000)
