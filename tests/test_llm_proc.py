"""The LLM process with the real bundled model: a requested reply becomes sentences; Cancel stops them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ipc.schema import CallEnded, CallStarted, Cancel, Heard, Heartbeat, Respond, Sentence, Trace
from tools.solo import SoloChild


@pytest.fixture(scope="module")
def llm() -> Iterator[SoloChild]:
    # Greedy decoding: a 135M model sampled at 0.6 sometimes wanders off; tests want the same reply every run.
    h = SoloChild("llm", {"ENGINE_LLM__MAX_TOKENS": "200", "ENGINE_LLM__TEMPERATURE": "0"})
    yield h
    h.close()


def start_call(llm: SoloChild, call_id: str, slot: int) -> None:
    """Start a call and wait until the LLM process tracks it (its heartbeat says so): CallStarted travels on
    the urgent lane, so a Respond sent right after it could otherwise overtake it."""
    llm.send(CallStarted(call_id=call_id, slot=slot, epoch=1, inbound_rate=16000), "transport")
    llm.wait_for("supervisor", Heartbeat, 10, lambda h: h.stats.get("calls") == 1)


def respond(call_id: str, text: str, gen: int = 1) -> Respond:
    return Respond(call_id=call_id, gen=gen, caller_text=text)


def test_a_question_becomes_a_spoken_reply_in_sentences(llm: SoloChild) -> None:
    start_call(llm, "CA-q", 0)
    try:
        llm.send(respond("CA-q", "What is the capital of France?"), "transport")
        sentences = [llm.wait_for("tts", Sentence, 60)]
        while not sentences[-1].last:
            sentences.append(llm.wait_for("tts", Sentence, 30))
        assert {s.gen for s in sentences} == {1}
        assert [s.index for s in sentences] == list(range(len(sentences)))
        reply = " ".join(s.text for s in sentences)
        assert "paris" in reply.lower(), reply
        stages = [t.stage for t in llm.messages("transport", Trace, 0.5) if t.call_id == "CA-q"]
        assert stages == ["llm_start", "llm_first_token", "llm_first_sentence"]
    finally:
        llm.send(CallEnded(call_id="CA-q", slot=0, epoch=1, reason="test"), "transport")


def test_cancel_stops_the_generation_and_nothing_more_of_it_arrives(llm: SoloChild) -> None:
    llm.wait_for("supervisor", Heartbeat, 10, lambda h: h.stats.get("calls") == 0)
    start_call(llm, "CA-c", 1)
    try:
        _cancel_scenario(llm)
    finally:
        llm.send(CallEnded(call_id="CA-c", slot=1, epoch=1, reason="test"), "transport")


def _cancel_scenario(llm: SoloChild) -> None:
    ask = "Tell me a very long story about a brave knight, a dragon and a princess, with many details."
    llm.send(respond("CA-c", ask), "transport")
    first = llm.wait_for("tts", Sentence, 60, lambda s: s.call_id == "CA-c")
    llm.send(Cancel(call_id="CA-c", gen=first.gen), "transport")
    after = [s for s in llm.messages("tts", Sentence, 3.0) if s.call_id == "CA-c"]
    assert len(after) <= 1  # at most one was already on its way when the cancel landed
    assert not any(s.last for s in after)  # the cancelled reply never completes
    # The caller heard only the first piece: the next reply is generation 2 and the history says so.
    llm.send(Heard(call_id="CA-c", gen=first.gen, text=first.text), "transport")
    llm.send(respond("CA-c", "Stop. What is two plus two?", gen=2), "transport")
    nxt = llm.wait_for("tts", Sentence, 60, lambda s: s.call_id == "CA-c" and s.gen == 2)
    assert nxt.index == 0


def test_a_line_to_say_is_spoken_verbatim_without_generating(llm: SoloChild) -> None:
    llm.wait_for("supervisor", Heartbeat, 10, lambda h: h.stats.get("calls") == 0)
    start_call(llm, "CA-s", 2)
    try:
        line = "Hello! How can I help you today?"
        llm.send(Respond(call_id="CA-s", gen=1, say=line), "transport")
        sentences = [llm.wait_for("tts", Sentence, 10, lambda s: s.call_id == "CA-s")]
        while not sentences[-1].last:
            sentences.append(llm.wait_for("tts", Sentence, 10, lambda s: s.call_id == "CA-s"))
        assert " ".join(s.text for s in sentences) == line
    finally:
        llm.send(CallEnded(call_id="CA-s", slot=2, epoch=1, reason="test"), "transport")
