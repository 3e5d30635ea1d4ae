"""The filter between the LLM and the TTS: what a voice says of a chat model's text."""

from __future__ import annotations

import pytest

from engine.speakable import speakable


@pytest.mark.parametrize(("written", "said"), [
    # Stage directions and placeholders are not speech.
    ("Sure thing [interrupted by the caller]", "Sure thing"),
    ("Happy to help. [interrupted by the", "Happy to help."),  # cut off before it closed
    ("caller] So, about your order.", "So, about your order."),  # the rest of one the previous piece opened
    ("We work with many people in [industry/field].", "We work with many people in."),
    ("*smiles* Of course!", "Of course!"),
    ("(laughs) That's a good one.", "That's a good one."),
    ("That is *really* important.", "That is really important."),
    ("Your total (before tax) is ready.", "Your total (before tax) is ready."),
    ("<break time='1s'/> Hello there.", "Hello there."),
    ("[pause]", ""),
    # Markdown and emojis.
    ("**Step one:** open the app.", "Step one: open the app."),
    ("- Bring your ID", "Bring your ID"),
    ("## Opening hours", "Opening hours"),
    ("Type `reset` and press enter.", "Type reset and press enter."),
    ("See [our page](https://example.com/hours) for more.", "See our page for more."),
    ("Great news! 🎉😀 You're booked.", "Great news! You're booked."),
    ("👍", ""),
    # URLs and e-mail.
    ("Visit https://www.example.com/help?x=1 today.", "Visit example dot com today."),
    ("Write to help@shop.example.org please.", "Write to help at shop dot example dot org please."),
    # Numbers the way a person says them.
    ("It costs $49.95 in total.", "It costs 49 dollars and 95 cents in total."),
    ("That's $1,200.", "That's 1200 dollars."),
    ("Only $1 today, or £0.50 there.", "Only 1 dollar today, or 50 pence there."),
    ("A 20% discount.", "A 20 percent discount."),
    ("We open at 9:00 a.m. and close at 5:30 pm.", "We open at 9 AM and close at 5 30 PM."),
    ("The meeting is at 10:00.", "The meeting is at 10 o'clock."),
    ("Be there by 3:05.", "Be there by 3 oh 5."),
    ("Call 555-123-4567 now.", "Call 5 5 5, 1 2 3, 4 5 6 7 now."),
    ("Call +1 (555) 123-4567.", "Call 1, 5 5 5, 1 2 3, 4 5 6 7."),
    ("My number is 5551234567.", "My number is 5 5 5, 1 2 3, 4 5 6 7."),
    ("Ask for room #12.", "Ask for room number 12."),
    ("Salt & pepper — both.", "Salt and pepper, both."),
    # What is already speech is left as it is.
    ("I can check that for you.", "I can check that for you."),
    ("The year 1987 was a good one, with 3 wins.", "The year 1987 was a good one, with 3 wins."),
])
def test_what_a_voice_says(written: str, said: str) -> None:
    assert speakable(written) == said


QUESTIONS = ["Hi, what can you help me with?", "Tell me about your opening hours.", "Do you sell gift cards?",
             "How much does delivery cost?", "Can I change my order?", "What is your phone number?",
             "Tell me a story about a cat.", "What's the weather like?", "Do you have parking?",
             "Can I pay by card?"] * 2


def test_a_barge_in_conversation_with_the_real_model_speaks_no_stage_direction() -> None:
    """20 turns with the bundled model, each reply cut off after its first few words, as a caller talking over it
    would. Before, the model copied the dialogue's "[interrupted by the caller]" into its replies and Piper read
    it out. Now no reply the model writes carries that note, and nothing said holds a bracket or asterisk."""
    from engine.config import LlmSection
    from engine.llm import LlamaCppBackend, Messages, OnDelta, resolve_gguf
    from engine.thinking import Reply, Thinking, generate
    from ipc.schema import CallStarted, Heard, Respond, Sentence

    model = LlamaCppBackend(resolve_gguf("smollm2-135m"), threads=2, temperature=0.0)  # greedy: same each run
    written: list[str] = []

    class Recording:
        """The model, with what it writes kept (before the filter) to look at."""

        def stream(self, messages: Messages, on_delta: OnDelta, max_tokens: int, slot: int | None = None) -> None:
            written.append("")

            def seen(delta: str) -> bool:
                written[-1] += delta
                return on_delta(delta)

            model.stream(messages, seen, max_tokens, slot)

    thinking = Thinking(LlmSection().system_prompt)
    thinking.handle(CallStarted(call_id="CA1", slot=0, epoch=1, inbound_rate=16000))
    said: list[str] = []
    for gen, question in enumerate(QUESTIONS, start=1):
        (job,) = thinking.handle(Respond(call_id="CA1", gen=gen, caller_text=question))
        outs: list[object] = []
        generate(Reply(job, max_sentences=2), Recording(), 60, outs.append)  # type: ignore[arg-type]
        spoken = " ".join(o.text for o in outs if isinstance(o, Sentence) and o.text)
        said.append(spoken)
        heard = " ".join(spoken.split()[:4])  # the caller talked over the rest
        thinking.handle(Heard(call_id="CA1", gen=gen, text=heard))
    print("\n".join(f"{w!r} -> {s!r}" for w, s in zip(written, said, strict=True)))
    assert not [w for w in written if "interrupted" in w.lower()], written
    assert not [s for s in said if any(c in s for c in "[]{}<>*")], said
    assert all(said), said
