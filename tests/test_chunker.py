"""The streaming sentence chunker, table-driven, fed as an LLM would feed it."""

from __future__ import annotations

import pytest

from engine.chunker import LOOP_SCAN_CHARS, SentenceChunker, loop_start


def chunk(text: str, step: int = 3, first_min_words: int = 4) -> list[str]:
    """Feed `text` in small deltas, as tokens arrive."""
    c = SentenceChunker(first_min_words=first_min_words)
    out: list[str] = []
    for i in range(0, len(text), step):
        out += c.push(text[i:i + step])
    return out + c.flush()


@pytest.mark.parametrize(("text", "expected"), [
    ("Hello there. How are you today? I am fine!",
     ["Hello there.", "How are you today?", "I am fine!"]),
    ("Sure, let me check that for you, it will only take a moment. Thanks for waiting.",  # a break before
     ["Sure, let me check that", "for you, it will only take a moment.", "Thanks for waiting."]),  # "for"
    ("Dr. Smith will see you at 3:30 p.m. on Friday. Please arrive early.",
     ["Dr. Smith will see you", "at 3:30 p.m. on Friday.", "Please arrive early."]),
    ("The total is $42.50, which includes tax. Anything else?",
     ["The total is $42.50,", "which includes tax.", "Anything else?"]),  # first clause goes early
    ("Pi is about 3.14159. That is all.", ["Pi is about 3.14159.", "That is all."]),
    ("Email me at john.doe@example.com. I reply fast.", ["Email me at john.doe@example.com.", "I reply fast."]),
    ("Visit www.example.co.uk for details. Bye.", ["Visit www.example.co.uk for details.", "Bye."]),
    ("Bring these:\n1. Your ID\n2. Your card\n3. A pen", ["Bring these:", "1. Your ID", "2. Your card", "3. A pen"]),
    ("We have apples, pears, e.g. the green ones, and plums. Want some?",
     ["We have apples, pears,", "e.g. the green ones, and plums.", "Want some?"]),
    ("J. R. R. Tolkien wrote it. Great book.", ["J. R. R. Tolkien wrote it.", "Great book."]),
    ("It opens at 9 a.m. tomorrow. See you.", ["It opens at 9 a.m. tomorrow.", "See you."]),
    ("Call 555-0199 now! Or later...", ["Call 555-0199 now!", "Or later..."]),
    ("He said \"Stop.\" Then he left.", ["He said \"Stop.\"", "Then he left."]),
    ("Version 2.0.1 is out. Update now.", ["Version 2.0.1 is out.", "Update now."]),
    ("Yes", ["Yes"]),
])
def test_pieces(text: str, expected: list[str]) -> None:
    assert chunk(text) == expected
    assert chunk(text, step=1) == expected  # token boundaries never change the result


def test_first_clause_needs_enough_words() -> None:
    assert chunk("Well, I think so. Yes.") == ["Well, I think so.", "Yes."]
    assert chunk("Well, I think so, honestly. Yes.", first_min_words=2) == ["Well, I think so,", "honestly.", "Yes."]


def test_a_dot_at_the_end_of_a_delta_waits_for_the_next_one() -> None:
    c = SentenceChunker()
    assert c.push("The rate is 3.") == []
    assert c.push("5 percent. Ok") == ["The rate is 3.5 percent."]
    assert c.flush() == ["Ok"]


def test_run_on_text_is_cut_at_a_space() -> None:
    pieces = chunk("word " * 200, first_min_words=100)
    assert all(len(p) <= 300 for p in pieces) and " ".join(pieces).split() == ["word"] * 200


@pytest.mark.parametrize(("text", "expected"), [
    ("I can certainly check that for you right now. Anything else?",  # no comma: a break before "for"
     ["I can certainly check that", "for you right now.", "Anything else?"]),
    ("We open every day at nine in the morning.", ["We open every day", "at nine in the morning."]),
    ("Absolutely wonderful question my friend indeed. Yes.",  # no break word: waits for the sentence
     ["Absolutely wonderful question my friend indeed.", "Yes."]),
    ("Sure, I can help you with that today.", ["Sure, I can help you", "with that today."]),
    ("Yes we do have vegetarian dishes on the menu.",  # the only break comes after six words: wait
     ["Yes we do have vegetarian dishes on the menu."]),
])
def test_the_first_piece_ends_at_a_natural_break_when_there_is_no_comma(text: str, expected: list[str]) -> None:
    assert chunk(text, first_min_words=3) == expected
    assert chunk(text, step=1, first_min_words=3) == expected  # however the deltas fall


@pytest.mark.parametrize(("text", "kept"), [
    ("Pour le plus, il y va la, il y va la, il y va la,", "Pour le plus, il y va la, "),
    ("Pour le plus, il y va la, il y va la, il y va la, il y", "Pour le plus, il y va la, "),  # caught mid-phrase
    ("a b c, a b c, a b c, a b c, a b c,", "a b c, "),  # however many times it came in one delta
    ("Okay. I'm fine, thanks. I'm fine, thanks. I'm fine, thanks.", "Okay. I'm fine, thanks. "),
    ("Ben-Arami, " * 8, "Ben-Arami, "),  # one word: eight times
    ("Really, really, really, really good question.", None),
    ("Ha ha ha ha, that's funny.", None),
    ("No, no, no, no, that is wrong.", None),
    ("Tick tock, tick tock, tick tock.", None),
    ("The PIN is 1 1 1 1.", None),
    ("It is blue, blue like the sea, blue like the sky.", None),
    ("one two three one two three", None),  # twice is not a loop
    ("... ... ... ... ... ... ... ...", None),  # no words in it
])
def test_a_phrase_said_over_and_over_is_a_loop_cut_after_its_first_time(text: str, kept: str | None) -> None:
    cut = loop_start(text)
    assert (None if cut is None else text[:cut]) == kept


def test_a_loop_at_the_end_of_a_long_reply_is_found_from_the_reply_s_end_alone() -> None:
    said = " ".join(f"word{i}" for i in range(3000)) + ". "  # ~26,000 characters of text that never repeats
    assert loop_start(said) is None
    text = said + "il y va la, " * 4
    cut = loop_start(text)
    assert cut is not None and text[:cut] == said + "il y va la, "
    # One delta far longer than the window read, a loop all through it: still cut, inside the loop, where the window
    # begins (not after its first time, which lies before the window).
    huge = said + "il y va la, " * 800
    cut = loop_start(huge)
    assert cut is not None and len(said) < cut and len(huge) - cut <= LOOP_SCAN_CHARS
