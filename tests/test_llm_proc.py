"""The LLM process: with the real bundled model a requested reply becomes sentences and Cancel stops them; with
the echo test backend, what the caller heard reaches the dialogue before the next reply is asked for, and a
restarted process goes on from the history the transport hands it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config_load import load_config
from engine.llm import Messages, OnDelta
from engine.trace import read_events
from ipc.schema import (
    CallEnded,
    CallStarted,
    Cancel,
    Heard,
    Heartbeat,
    History,
    HistoryTurn,
    Respond,
    RunInfo,
    Sentence,
)
from procs.llm import LlmProc
from tools.solo import SoloChild


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llm") / "trace.jsonl"


@pytest.fixture(scope="module")
def llm(trace_file: Path) -> Iterator[SoloChild]:
    # Greedy decoding: a 135M model sampled at 0.6 sometimes wanders off; tests want the same reply every run.
    h = SoloChild("llm", {"ENGINE_LLM__MAX_TOKENS": "200", "ENGINE_LLM__TEMPERATURE": "0",
                          "ENGINE_ENGINE__TRACE_FILE": str(trace_file)})
    yield h
    h.close()


def start_call(llm: SoloChild, call_id: str, slot: int) -> None:
    """Start a call as the transport does: what the transport sends next arrives after it."""
    llm.send(CallStarted(call_id=call_id, slot=slot, epoch=1, inbound_rate=16000), "transport")


def respond(call_id: str, text: str, gen: int = 1) -> Respond:
    return Respond(call_id=call_id, gen=gen, caller_text=text)


def test_a_question_becomes_a_spoken_reply_in_sentences(llm: SoloChild, trace_file: Path) -> None:
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
        time.sleep(0.3)  # the process's trace sink writes from its own thread
        stages = [e.stage for e in read_events(trace_file) if e.call == "CA-q"]  # written by the LLM itself
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


@pytest.fixture(scope="module")
def echo() -> Iterator[SoloChild]:
    h = SoloChild("llm", {"ENGINE_LLM__BACKEND": "echo"})
    yield h
    h.close()


def test_what_was_heard_reaches_the_dialogue_before_the_next_reply_under_load(echo: SoloChild) -> None:
    """A barge-in sends Heard(gen) and Respond(gen + 1) back to back. Behind a backlog of other calls' messages,
    the reply must still be built on the heard text: the echo backend says back the history it was given."""
    start_call(echo, "CA-o", 0)
    start_call(echo, "CA-busy", 1)
    try:
        for gen in range(1, 11):
            for i in range(2000):  # another call's traffic queued ahead on the same lane
                echo.send(Heard(call_id="CA-busy", gen=i, text="noise"), "transport")
            heard = f"the part heard of reply {gen}"
            echo.send(Heard(call_id="CA-o", gen=gen, text=heard), "transport")
            echo.send(Respond(call_id="CA-o", gen=gen + 1, caller_text=f"question {gen}"), "transport")
            sentences = [echo.wait_for("tts", Sentence, 30, lambda s, g=gen: s.gen == g + 1)]
            while not sentences[-1].last:
                sentences.append(echo.wait_for("tts", Sentence, 10, lambda s, g=gen: s.gen == g + 1))
            reply = " ".join(s.text for s in sentences)
            assert f"Before that I said: {heard}." in reply, (gen, reply)  # built on the heard text
    finally:
        for call_id, slot in (("CA-o", 0), ("CA-busy", 1)):
            echo.send(CallEnded(call_id=call_id, slot=slot, epoch=1, reason="test"), "transport")


def test_two_calls_replies_are_made_at_once(llm: SoloChild) -> None:
    """Each call has its own slot and worker: the second call's reply does not wait for the first's to end."""
    llm.wait_for("supervisor", Heartbeat, 10, lambda h: h.stats.get("calls") == 0)
    for call_id, slot in (("CA-x", 0), ("CA-y", 1)):  # ring slots the earlier tests used: a later epoch
        llm.send(CallStarted(call_id=call_id, slot=slot, epoch=2, inbound_rate=16000), "transport")
    try:
        ask = "Tell me a very long story about a brave knight, a dragon and a princess, with many details."
        llm.send(respond("CA-x", ask), "transport")
        llm.send(respond("CA-y", ask), "transport")
        order: list[tuple[str, bool]] = []
        deadline = time.monotonic() + 90
        while sum(last for _, last in order) < 2 and time.monotonic() < deadline:
            s = llm.wait_for("tts", Sentence, 60, lambda m: m.call_id in ("CA-x", "CA-y"))
            order.append((s.call_id, s.last))
        assert sum(last for _, last in order) == 2, order
        first_done = next(i for i, (_, last) in enumerate(order) if last)
        other = "CA-y" if order[first_done][0] == "CA-x" else "CA-x"
        assert any(call == other for call, _ in order[:first_done]), order  # both were speaking before one ended
    finally:
        for call_id, slot in (("CA-x", 0), ("CA-y", 1)):
            llm.send(CallEnded(call_id=call_id, slot=slot, epoch=2, reason="test"), "transport")


def test_a_restarted_llm_goes_on_from_the_history_the_transport_hands_it(echo: SoloChild) -> None:
    """After a restart the transport's `History` may overtake the supervisor's replayed `CallStarted`: it is kept
    until the call starts, and the next reply is built on it (the echo backend says back the last answer)."""
    echo.wait_for("supervisor", Heartbeat, 10, lambda h: h.stats.get("calls") == 0)
    turns = [HistoryTurn(role="user", text="What is two plus two?"),
             HistoryTurn(role="assistant", text="It is four", gen=1)]
    echo.send(History(call_id="CA-h", turns=turns), "transport")
    echo.send(CallStarted(call_id="CA-h", slot=3, epoch=1, inbound_rate=16000), "supervisor")
    echo.wait_for("supervisor", Heartbeat, 10, lambda h: h.stats.get("calls") == 1)
    try:
        echo.send(Respond(call_id="CA-h", gen=2, caller_text="And three plus three?"), "transport")
        sentences = [echo.wait_for("tts", Sentence, 30, lambda s: s.call_id == "CA-h")]
        while not sentences[-1].last:
            sentences.append(echo.wait_for("tts", Sentence, 10, lambda s: s.call_id == "CA-h"))
        reply = " ".join(s.text for s in sentences)
        assert reply.startswith("You said: And three plus three?") and "Before that I said: It is four." in reply
    finally:
        echo.send(CallEnded(call_id="CA-h", slot=3, epoch=1, reason="test"), "transport")


class Closable:
    """A test backend, not a model: says nothing, and remembers being closed."""

    def __init__(self) -> None:
        self.closed = 0

    def stream(self, messages: Messages, on_delta: OnDelta, max_tokens: int, slot: int | None = None) -> None:
        pass

    def prefill(self, messages: Messages, slot: int | None = None) -> None:
        pass

    def close(self) -> None:
        self.closed += 1


def test_the_process_closes_its_backend_on_the_way_out() -> None:
    """vLLM's backend owns an engine-core process: a process that stops must close it, not leave it to exit."""
    run = RunInfo(proc="llm", incarnation=1, supervisor_pid=os.getpid(), pool_name="unused", runtime_dir="/tmp")
    proc = LlmProc(load_config(environ={}), run)
    backend = Closable()
    proc.backend = backend
    proc.teardown()
    assert backend.closed == 1
