"""Heard-only history."""

from engine.dialogue import Dialogue


def test_history_keeps_what_was_heard_not_what_was_generated() -> None:
    d = Dialogue("You are a receptionist.")
    d.add_user("Do you open on Sunday?")
    d.add_assistant(1, "Yes, we open on Sunday from ten to four. Would you like to book?")
    d.heard(1, "Yes, we open on Sunday")
    assert d.messages() == [
        {"role": "system", "content": "You are a receptionist."},
        {"role": "user", "content": "Do you open on Sunday?"},
        {"role": "assistant", "content": "Yes, we open on Sunday"},
    ]


def test_a_reply_nobody_heard_leaves_no_trace() -> None:
    d = Dialogue("sys")
    d.add_user("Hello?")
    d.add_assistant(2, "Hi there, how can I help you today?")
    d.heard(2, "")
    d.add_user("Are you there?")
    assert [m["role"] for m in d.messages()] == ["system", "user"]
    assert d.messages()[1]["content"] == "Hello? Are you there?"


def test_uninterrupted_replies_stay_whole_and_history_is_bounded() -> None:
    d = Dialogue("sys", max_turns=4)
    for i in range(5):
        d.add_user(f"question {i}")
        d.add_assistant(i, f"answer {i}")
    assert [m["content"] for m in d.messages()[1:]] == ["question 3", "answer 3", "question 4", "answer 4"]


def test_heard_report_arriving_before_the_reply_was_recorded() -> None:
    d = Dialogue("sys")
    d.add_user("Hi")
    d.heard(7, "Good morning")
    assert d.messages()[-1] == {"role": "assistant", "content": "Good morning"}


def test_a_heard_report_that_came_first_is_not_overwritten_by_the_whole_reply() -> None:
    d = Dialogue("sys")
    d.add_user("Tell me a story.")
    d.heard(3, "Once upon a time")  # the caller cut it short before the model had finished writing it down
    d.add_assistant(3, "Once upon a time there was a fox who lived by the river.")
    assert d.messages()[-1] == {"role": "assistant", "content": "Once upon a time"}


def test_a_caller_who_keeps_talking_over_the_bot_does_not_grow_one_turn_without_end() -> None:
    """Every reply cut before it was heard: the caller's words pile into one user turn, which keeps the latest."""
    from engine.dialogue import MAX_CALLER_CHARS
    from engine.thinking import Thinking
    from ipc.schema import CallStarted, Cancel, Respond

    thinking = Thinking("sys")
    thinking.handle(CallStarted(call_id="CA1", slot=0, epoch=1, inbound_rate=16000))
    said = [f"no wait listen to me this is about my account number {i} okay" for i in range(1, 501)]
    for gen, text in enumerate(said, start=1):
        (job,) = thinking.handle(Respond(call_id="CA1", gen=gen, caller_text=text))
        thinking.handle(Cancel(call_id="CA1", gen=gen))  # the caller talks on: the reply is never heard
    (user,) = [m["content"] for m in job.messages if m["role"] == "user"]
    assert len(user) <= MAX_CALLER_CHARS
    assert user.startswith("…") and user.endswith(said[-1])
    assert user[1:].split(" ", 1)[0] in said[0].split()  # cut at a word boundary, not mid-word
    (mind,) = [call.state for call in thinking.calls.values()]
    assert all(len(turn.text) <= MAX_CALLER_CHARS for turn in mind.dialogue.turns)


def test_caller_turns_either_side_of_unheard_replies_reach_the_model_bounded() -> None:
    d = Dialogue("sys", max_caller_chars=100)
    for i in range(30):
        d.add_user(f"sentence number {i} of many")
        d.add_assistant(i, "A reply the caller talked over.")
        d.heard(i, "")
    _system, user = d.messages()
    assert user["role"] == "user" and len(user["content"]) <= 100
    assert user["content"].endswith("sentence number 29 of many")
