"""The LLM process's logic with no process and no model: a scripted backend streams fixed deltas."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from engine.first_pieces import FirstPieces
from engine.llm import EchoBackend, Messages, OnDelta
from engine.thinking import Out, Reply, ReplyJob, Stage, Thinking, generate
from ipc.schema import CallEnded, CallStarted, Cancel, Commit, Heard, Prepare, Respond, Sentence


class ScriptedLlm:
    """A test backend, not a model: streams the deltas it was given, and records the prompts it saw."""

    def __init__(self, deltas: list[str], fail_after: int | None = None,
                 during: Callable[[int], None] | None = None) -> None:
        self.deltas = deltas
        self.fail_after = fail_after
        self.during = during  # called before each delta with its index (a cancel arriving mid-stream)
        self.prompts: list[Messages] = []

    def stream(self, messages: Messages, on_delta: OnDelta, max_tokens: int, slot: int | None = None) -> None:
        self.prompts.append(messages)
        for i, delta in enumerate(self.deltas[:max_tokens]):
            if self.fail_after is not None and i == self.fail_after:
                raise ConnectionError("server went away")
            if self.during is not None:
                self.during(i)
            if on_delta(delta):
                return


def started(thinking: Thinking, call_id: str = "CA1", slot: int = 0) -> None:
    thinking.handle(CallStarted(call_id=call_id, slot=slot, epoch=1, inbound_rate=16000))


def ask(thinking: Thinking, text: str, gen: int = 1, call_id: str = "CA1") -> ReplyJob:
    (job,) = thinking.handle(Respond(call_id=call_id, gen=gen, caller_text=text))
    return job


def run(job: ReplyJob, backend: object) -> tuple[str, list[Out]]:
    outs: list[Out] = []
    outcome = generate(Reply(job), backend, 100, outs.append)  # type: ignore[arg-type]
    return outcome, outs


def sentences(outs: list[Out]) -> list[tuple[int, str, bool]]:
    return [(o.index, o.text, o.last) for o in outs if isinstance(o, Sentence)]


def test_a_reply_stops_after_max_sentences_and_only_what_was_said_joins_the_dialogue() -> None:
    thinking = Thinking("Be brief.")
    started(thinking)
    job = ask(thinking, "Any ideas for breakfast?")
    seen: list[int] = []
    llm = ScriptedLlm(["Try oats,", " with fruit.", " Or eggs.", " 1. Toast", " is quick.", " 2. Tea", " too."],
                      during=seen.append)
    outs: list[Out] = []
    assert generate(Reply(job, max_sentences=2), llm, 100, outs.append) == "done"
    assert sentences(outs) == [(0, "Try oats, with fruit.", False), (1, "Or eggs.", False), (2, "", True)]
    assert max(seen) < 5  # the model was stopped, not run to its end
    assert job.mind.dialogue.messages()[-1] == {"role": "assistant", "content": "Try oats, with fruit. Or eggs."}
    # A line to say verbatim is said whole.
    (say,) = thinking.handle(Respond(call_id="CA1", gen=2, say="One. Two. Three."))
    outs = []
    generate(Reply(say, max_sentences=1), llm, 100, outs.append)
    assert [t for _, t, _ in sentences(outs)] == ["One.", "Two.", "Three."]


def test_deltas_become_sentences_as_soon_as_each_is_speakable() -> None:
    thinking = Thinking("Be brief.")
    started(thinking)
    job = ask(thinking, "What are your hours?")
    llm = ScriptedLlm(["We open", " at nine,", " every day", " of the week.", " See", " you soon!"])
    outcome, outs = run(job, llm)
    assert outcome == "done"
    assert llm.prompts[0] == [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "What are your hours?"}]
    assert sentences(outs) == [(0, "We open at nine,", False), (1, "every day of the week.", False),
                               (2, "See you soon!", True)]
    # The stages come as the reply reaches them, before the sentence that reached them goes out.
    names = [o.name if isinstance(o, Stage) else f"S{o.index}" for o in outs]
    assert names == ["llm_start", "llm_first_token", "llm_first_sentence", "S0", "S1", "S2"]
    assert job.mind.dialogue.messages()[-1] == {"role": "assistant",
                                                "content": "We open at nine, every day of the week. See you soon!"}


def test_a_reply_whose_text_ends_on_a_sentence_still_says_it_is_over() -> None:
    thinking = Thinking("sys")
    started(thinking)
    _, outs = run(ask(thinking, "Hi"), ScriptedLlm(["Hello there. ", "How can I help? "]))
    assert sentences(outs) == [(0, "Hello there.", False), (1, "How can I help?", False), (2, "", True)]


def test_a_reply_cut_by_max_tokens_ends_on_its_last_whole_sentence_or_says_its_only_fragment() -> None:
    thinking = Thinking("Be brief.")
    started(thinking)
    job = ask(thinking, "What colour is the sky?")
    llm = ScriptedLlm(["It is blue.", " On a clear day", " it is a shade", " of blue that", " never"])
    outs: list[Out] = []
    assert generate(Reply(job), llm, 4, outs.append) == "done"  # stopped at 4 tokens, mid-sentence
    assert sentences(outs) == [(0, "It is blue.", False), (1, "", True)]
    assert job.mind.dialogue.messages()[-1] == {"role": "assistant", "content": "It is blue."}
    # The same reply with room to finish keeps its second sentence's words as they came.
    job = ask(thinking, "What colour is the sky?", gen=2)
    outs = []
    generate(Reply(job), ScriptedLlm(["It is blue.", " On a clear day", " bright", " blue."]), 4, outs.append)
    assert said(outs) == "It is blue. On a clear day bright blue."
    # With no sentence finished, what the model made is said rather than nothing.
    job = ask(thinking, "And at night?", gen=3)
    outs = []
    generate(Reply(job), ScriptedLlm(["At night", " the sky turns", " a deep", " shade of"]), 4, outs.append)
    assert said(outs) == "At night the sky turns a deep shade of"


def test_a_model_caught_in_a_loop_is_stopped_and_its_reply_ends_before_the_repeats() -> None:
    thinking = Thinking("Be brief.")
    started(thinking)
    job = ask(thinking, "Can you recommend a good book?")
    loop = ["Pour le plus,", " il y va", " la,"] + [" il", " y", " va", " la,"] * 20
    llm = ScriptedLlm(loop)
    outs: list[Out] = []
    reply = Reply(job)
    assert generate(reply, llm, 80, outs.append) == "done"
    assert reply.repeated and reply.deltas == 3 + 4 * 2  # stopped at the third time, not at 80 tokens
    assert said(outs) == "Pour le plus, il y va la,"
    assert sentences(outs)[-1] == (1, "", True)
    assert job.mind.dialogue.messages()[-1] == {"role": "assistant", "content": "Pour le plus, il y va la,"}


def test_a_line_to_say_is_chunked_and_remembered_without_the_model() -> None:
    thinking = Thinking("sys")
    started(thinking)
    (job,) = thinking.handle(Respond(call_id="CA1", gen=1, say="Hello! How can I help you today?"))
    llm = ScriptedLlm(["never used"])
    outcome, outs = run(job, llm)
    assert outcome == "done" and llm.prompts == []
    assert " ".join(t for _, t, _ in sentences(outs)) == "Hello! How can I help you today?"
    assert sentences(outs)[-1][2]
    assert job.mind.dialogue.messages()[-1]["role"] == "assistant"


def test_a_cancel_mid_stream_stops_the_reply_and_nothing_of_it_is_kept() -> None:
    thinking = Thinking("sys")
    started(thinking)
    job = ask(thinking, "Tell me a story.")
    cancel_at = 3

    def barge_in(i: int) -> None:
        if i == cancel_at:
            thinking.handle(Cancel(call_id="CA1", gen=1))

    llm = ScriptedLlm(["Once upon a time,", " there was", " a fox.", " It lived", " by a river.", " The end."],
                      during=barge_in)
    outcome, outs = run(job, llm)
    assert outcome == "stopped"
    assert sentences(outs) == [(0, "Once upon a time,", False)]  # what was speakable before the cancel
    assert all(not last for _, _, last in sentences(outs))
    assert [m["role"] for m in job.mind.dialogue.messages()] == ["system", "user"]
    thinking.handle(Heard(call_id="CA1", gen=1, text="Once upon a time,"))
    assert job.mind.dialogue.messages()[-1]["content"] == "Once upon a time,"  # the heard part, as heard


def test_a_failing_backend_ends_the_reply_with_what_it_had() -> None:
    thinking = Thinking("sys")
    started(thinking)
    reply = Reply(ask(thinking, "Hi"))
    outs: list[Out] = []
    outcome = generate(reply, ScriptedLlm(["Hello there.", " How", " are you"], fail_after=2), 100, outs.append)
    assert outcome == "failed" and isinstance(reply.error, ConnectionError)
    assert sentences(outs) == [(0, "Hello there.", False), (1, "How", True)]


def test_a_newer_request_supersedes_one_not_yet_made() -> None:
    thinking = Thinking("sys")
    started(thinking)
    first = ask(thinking, "One.")
    second = ask(thinking, "Two.", gen=2)
    assert run(first, ScriptedLlm(["Uno."]))[0] == "stopped"
    assert run(second, ScriptedLlm(["Dos."]))[0] == "done"


def test_a_cancel_that_overtook_its_call_start_still_applies() -> None:
    thinking = Thinking("sys")
    thinking.handle(Cancel(call_id="CA9", gen=1))  # urgent: it may arrive before the call's start
    started(thinking, "CA9", slot=3)
    assert run(ask(thinking, "Hello?", call_id="CA9"), ScriptedLlm(["Hi."]))[0] == "stopped"


def test_an_ended_call_stops_its_reply_and_asks_for_no_more() -> None:
    thinking = Thinking("sys")
    started(thinking)
    job = ask(thinking, "Hello?")
    thinking.handle(CallEnded(call_id="CA1", slot=0, epoch=1, reason="hung up"))
    assert run(job, ScriptedLlm(["Hi."]))[0] == "stopped"
    assert thinking.handle(Respond(call_id="CA1", gen=2, caller_text="Still there?")) == []


def test_a_reply_is_built_on_what_the_caller_heard_of_the_last_one() -> None:
    thinking = Thinking("sys")
    started(thinking)
    run(ask(thinking, "Tell me about tides."), ScriptedLlm(["Tides come from the moon's pull on the sea."]))
    thinking.handle(Heard(call_id="CA1", gen=1, text="Tides come from"))
    job = ask(thinking, "Why?", gen=2)
    assert job.messages[-2] == {"role": "assistant", "content": "Tides come from"}  # cut off: what the caller heard
    _, outs = run(job, EchoBackend())
    reply = " ".join(t for _, t, _ in sentences(outs))
    assert reply == "You said: Why?. Before that I said: Tides come from."


@pytest.mark.parametrize("shutting_down", [True, False])
def test_a_process_shutting_down_makes_no_more(shutting_down: bool) -> None:
    thinking = Thinking("sys")
    started(thinking)
    outs: list[Out] = []
    reply = Reply(ask(thinking, "Hi"), shutting_down=lambda: shutting_down)
    outcome = generate(reply, ScriptedLlm(["Hello."]), 100, outs.append)
    assert (outcome, bool(sentences(outs))) == (("stopped", False) if shutting_down else ("done", True))


def provisional(thinking: Thinking, text: str, gen: int) -> ReplyJob:
    (job,) = thinking.handle(Respond(call_id="CA1", gen=gen, caller_text=text, provisional=True))
    return job


def test_a_provisional_reply_joins_the_dialogue_only_when_committed() -> None:
    thinking = Thinking("sys")
    started(thinking)
    job = provisional(thinking, "What time do you open?", 1)
    assert job.messages[-1] == {"role": "user", "content": "What time do you open?"}
    run(job, ScriptedLlm(["At nine."]))
    assert [m["role"] for m in job.mind.dialogue.messages()] == ["system"]  # the turn may not be over yet
    thinking.handle(Commit(call_id="CA1", gen=1))
    assert job.mind.dialogue.messages()[1:] == [{"role": "user", "content": "What time do you open?"},
                                                {"role": "assistant", "content": "At nine."}]


def test_a_reply_committed_while_it_is_made_joins_the_dialogue_when_done() -> None:
    thinking = Thinking("sys")
    started(thinking)
    job = provisional(thinking, "Hi.", 1)
    llm = ScriptedLlm(["Hello", " there."], during=lambda i: i == 1 and thinking.handle(Commit(call_id="CA1", gen=1)))
    run(job, llm)
    assert [m["content"] for m in job.mind.dialogue.messages()[1:]] == ["Hi.", "Hello there."]


def test_a_dropped_provisional_reply_leaves_nothing_and_the_next_one_is_built_without_it() -> None:
    thinking = Thinking("sys")
    started(thinking)
    first = provisional(thinking, "I would like", 1)
    run(first, ScriptedLlm(["Sure."]))
    thinking.handle(Cancel(call_id="CA1", gen=1))
    second = ask(thinking, "I would like a table for two.", gen=2)
    assert second.messages[1:] == [{"role": "user", "content": "I would like a table for two."}]


def test_a_prepare_reads_the_dialogue_in_up_to_the_callers_turn_and_a_reply_voids_it() -> None:
    thinking = Thinking("sys")
    started(thinking)
    run(ask(thinking, "Hi."), ScriptedLlm(["Hello."]))
    (warm,) = thinking.handle(Prepare(call_id="CA1"))
    assert warm.prepare and not warm.prepare_void()
    assert warm.messages[-1] == {"role": "user", "content": ""}  # where the caller's next words will go
    assert warm.messages[:-1] == warm.mind.dialogue.messages()
    ask(thinking, "What time is it?", gen=2)
    assert warm.prepare_void()  # the reply itself is asked for: reading the context in first only delays it


def test_each_call_gets_its_own_slot_until_they_run_out_then_the_least_shared() -> None:
    thinking = Thinking("sys", slots=2)
    for i in range(5):
        started(thinking, f"CA{i}", slot=i)
    slots = [thinking.calls.find(f"CA{i}").state.slot for i in range(5)]  # type: ignore[union-attr]
    assert slots[:2] == [0, 1] and sorted(slots) == [0, 0, 0, 1, 1]
    thinking.handle(CallEnded(call_id="CA1", slot=1, epoch=1, reason="hung up"))
    started(thinking, "CA5", slot=5)
    assert thinking.calls.find("CA5").state.slot == 1  # type: ignore[union-attr]


def test_a_call_that_begins_alone_gets_the_solo_slot_and_calls_beside_it_the_shared_ones() -> None:
    thinking = Thinking("sys", slots=2, solo_slot=2)
    assert thinking.contexts == 3
    started(thinking, "CA0", slot=0)
    started(thinking, "CA1", slot=1)
    started(thinking, "CA2", slot=2)
    slot = {f"CA{i}": thinking.calls.find(f"CA{i}").state.slot for i in range(3)}  # type: ignore[union-attr]
    assert slot == {"CA0": 2, "CA1": 0, "CA2": 1}
    thinking.handle(CallEnded(call_id="CA0", slot=0, epoch=1, reason="hung up"))
    started(thinking, "CA3", slot=3)  # the solo slot is free, but the box is not: a shared slot
    assert thinking.calls.find("CA3").state.slot == 0  # type: ignore[union-attr]
    for i, s in ((1, 1), (2, 2), (3, 3)):
        thinking.handle(CallEnded(call_id=f"CA{i}", slot=s, epoch=1, reason="hung up"))
    started(thinking, "CA4", slot=4)
    assert thinking.calls.find("CA4").state.slot == 2  # alone again


def test_calls_replayed_to_a_restarted_llm_beside_others_get_no_solo_slot() -> None:
    """The supervisor replays every live call to a new llm process: the first one finds no call yet, but the box
    is not idle (each replayed CallStarted says how many calls are live)."""
    thinking = Thinking("sys", slots=2, solo_slot=2)
    for i in range(3):
        thinking.handle(CallStarted(call_id=f"CA{i}", slot=i, epoch=1, inbound_rate=16000, live=3))
    assert sorted(thinking.calls.find(f"CA{i}").state.slot for i in range(3)) == [0, 0, 1]  # type: ignore[union-attr]


def said(outs: list[Out]) -> str:
    """The reply's pieces as the voice says them, one after another."""
    return " ".join(t for _, t, _ in sentences(outs) if t)


class ResumableLlm:
    """A test backend, not a model: one fixed reply, streamed from where the prompt's trailing assistant message
    (a continuation) leaves off; `during(prompt_no, index)` runs before each delta; `stopped` is set when told to
    stop."""

    def __init__(self, deltas: list[str], during: Callable[[int, int], None] = lambda n, i: None) -> None:
        self.deltas = deltas
        self.during = during
        self.prompts: list[Messages] = []
        self.stopped = threading.Event()

    def stream(self, messages: Messages, on_delta: OnDelta, max_tokens: int, slot: int | None = None) -> None:
        self.prompts.append(messages)
        said = messages[-1]["content"] if messages[-1]["role"] == "assistant" else ""
        start = next(i for i in range(len(self.deltas) + 1) if "".join(self.deltas[:i]) == said)
        for i in range(start, min(len(self.deltas), start + max_tokens)):
            self.during(len(self.prompts), i)
            if on_delta(self.deltas[i]):
                self.stopped.set()
                return


def test_a_reply_past_its_first_piece_gives_way_to_one_starting_and_goes_on_from_its_own_text() -> None:
    """Replies decoded together on a CPU slow each other: the one making its first piece goes first."""
    thinking = Thinking("sys", slots=2)
    started(thinking, "CA1", slot=0)
    started(thinking, "CA2", slot=1)
    first_pieces = FirstPieces()
    events: list[str] = []
    b_began = threading.Event()
    b_thread: list[threading.Thread] = []

    def a_during(prompt_no: int, i: int) -> None:
        if prompt_no == 1 and i == 3:  # B's reply begins as A's first piece comes out (with this delta)
            b_thread.append(threading.Thread(target=run_b))
            b_thread[0].start()
            assert b_began.wait(5)
        if prompt_no == 2 and i == 4:
            events.append("A resumed")

    def b_during(prompt_no: int, i: int) -> None:
        b_began.set()
        if i == 0:
            assert a_llm.stopped.wait(5)  # A gave way before B made anything

    a_llm = ResumableLlm(["Sure,", " I can", " help.", " The shop", " opens", " at nine.", " Bye."], a_during)
    b_llm = ResumableLlm(["Hello there,", " friend.", " How", " are you?"], b_during)
    a_job, b_job = ask(thinking, "When do you open?", call_id="CA1"), ask(thinking, "Hi", call_id="CA2")

    def emit_b(out: Out) -> None:
        if isinstance(out, Sentence) and out.index == 0:
            events.append("B first piece")

    def run_b() -> None:
        generate(Reply(b_job, first_clause_words=2), b_llm, 100, emit_b, first_pieces)

    a_outs: list[Out] = []
    assert generate(Reply(a_job, first_clause_words=2), a_llm, 100, a_outs.append, first_pieces) == "done"
    b_thread[0].join(5)
    assert events == ["B first piece", "A resumed"]
    assert len(a_llm.prompts) == 2 and len(b_llm.prompts) == 1
    assert a_llm.prompts[1][:-1] == a_llm.prompts[0]
    assert a_llm.prompts[1][-1] == {"role": "assistant", "content": "Sure, I can help. The shop"}
    assert said(a_outs) == "Sure, I can help. The shop opens at nine. Bye."
    assert first_pieces.yields == 1
    assert a_job.mind.dialogue.messages()[-1]["content"] == "Sure, I can help. The shop opens at nine. Bye."


@pytest.mark.parametrize("enabled", [True, False])
def test_a_reply_gives_way_for_at_most_its_wait_then_goes_on(enabled: bool) -> None:
    """Another reply stuck before its first piece (here: never producing one) delays this one by `max_wait_s` in
    all, not forever; switched off (as for vLLM), it never gives way."""
    thinking = Thinking("sys")
    started(thinking)
    first_pieces = FirstPieces(enabled=enabled, max_wait_s=0.05)
    first_pieces.begin()  # a reply elsewhere, making its first piece throughout
    llm = ResumableLlm(["One,", " two,", " three.", " Four.", " Five.", " Six."])
    outs: list[Out] = []
    assert generate(Reply(ask(thinking, "Count"), first_clause_words=1), llm, 100, outs.append,
                    first_pieces) == "done"
    assert said(outs) == "One, two, three. Four. Five. Six."
    assert first_pieces.yields == (1 if enabled else 0)  # one wait spends the reply's whole allowance
    assert len(llm.prompts) == (2 if enabled else 1)


def test_a_reply_cancelled_while_it_gives_way_is_not_resumed() -> None:
    thinking = Thinking("sys")
    started(thinking)
    first_pieces = FirstPieces(max_wait_s=5.0)
    first_pieces.begin()
    job = ask(thinking, "Count")

    def cancel_soon() -> None:
        time.sleep(0.05)
        thinking.handle(Cancel(call_id="CA1", gen=1))

    threading.Thread(target=cancel_soon).start()
    llm = ResumableLlm(["One,", " two,", " three.", " Four."])
    outs: list[Out] = []
    assert generate(Reply(job, first_clause_words=1), llm, 100, outs.append, first_pieces) == "stopped"
    assert len(llm.prompts) == 1 and first_pieces.yields == 1


class NoContinuingLlm(ResumableLlm):
    """A test backend, not a model: like a chat template that refuses to continue an assistant message."""

    def stream(self, messages: Messages, on_delta: OnDelta, max_tokens: int, slot: int | None = None) -> None:
        if messages[-1]["role"] == "assistant":
            self.prompts.append(messages)
            raise ConnectionError("Assistant response prefill is incompatible with this template")
        super().stream(messages, on_delta, max_tokens, slot)


def test_a_model_that_will_not_continue_a_reply_ends_that_reply_with_what_it_had_and_no_reply_gives_way_again() \
        -> None:
    thinking = Thinking("sys")
    started(thinking)
    first_pieces = FirstPieces(max_wait_s=0.01)
    first_pieces.begin()  # a reply elsewhere, making its first piece
    llm = NoContinuingLlm(["One,", " two,", " three.", " Four."])
    outs: list[Out] = []
    assert generate(Reply(ask(thinking, "Count"), first_clause_words=1), llm, 100, outs.append,
                    first_pieces) == "failed"
    assert said(outs) == "One, two,"  # what it had, said
    assert not first_pieces.enabled
    outs = []
    assert generate(Reply(ask(thinking, "Again", gen=2), first_clause_words=1), llm, 100, outs.append,
                    first_pieces) == "done"
    assert said(outs) == "One, two, three. Four."
