"""The conversation state machine, driven event by event with a fake clock: no process, socket or model."""

from __future__ import annotations

from engine.conductor import Conductor, Phase
from engine.conductor_io import (
    Action,
    AudioStarted,
    CancelReply,
    Clear,
    CommitReply,
    Connected,
    DiscardReply,
    HangUp,
    HungUp,
    KeyPressed,
    MarkPlayed,
    Note,
    PeerRestarted,
    PrepareReply,
    ReportHeard,
    RequestReply,
    RestoreHistory,
    Speak,
    Tick,
)
from engine.config import ConversationSection as ConductorConfig
from ipc.schema import EndOfTurn, SpeechResumed, SpeechStarted, SpeechSustained, Spoken, Transcript

CALL = "CA-test"


def started() -> SpeechStarted:
    return SpeechStarted(call_id=CALL, turn=1, onset_t_ns=0)


def sustained() -> SpeechSustained:
    return SpeechSustained(call_id=CALL, turn=1)


def turn_over() -> EndOfTurn:
    return EndOfTurn(call_id=CALL, turn=1, speech_end_t_ns=0)


def said(text: str) -> Transcript:
    return Transcript(call_id=CALL, turn=1, text=text, final=True, speech_end_t_ns=0, audio_ms=0, stt_ms=0)


def span(gen: int, index: int, seq_first: int, seq_last: int, text: str, last: bool) -> Spoken:
    return Spoken(call_id=CALL, gen=gen, index=index, seq_first=seq_first, seq_last=seq_last, text=text, last=last)


def barge_in(c: Conductor, now: float, played: int | None = None) -> list[Action]:
    """The caller talks over the bot: the speech process reports the turn and, with no minimum, that it may
    interrupt, back to back."""
    assert kinds(c.handle(started(), now, played)) == []
    return c.handle(sustained(), now, played)


def kinds(actions: list[object]) -> list[str]:
    """The actions that change what the caller hears or what the LLM does (not notes, not context warm-ups)."""
    return [type(a).__name__ for a in actions if not isinstance(a, Note | PrepareReply)]


def play_reply(c: Conductor, gen: int, spans: list[str], now: float, first_seq: int = 0) -> int:
    """The TTS queues `spans` of reply `gen` (10 frames each) and their audio starts; returns the next seq."""
    seq = first_seq
    for i, text in enumerate(spans):
        c.handle(span(gen, i, seq, seq + 9, text, i == len(spans) - 1), now)
        seq += 10
    c.handle(AudioStarted(gen), now)
    return seq


def test_greets_on_connect_and_listens_after_the_greeting_played() -> None:
    c = Conductor(ConductorConfig(greeting="Hi there."), 0.0)
    assert c.handle(Connected(), 0.0) == [RequestReply(1, say="Hi there.")]
    assert c.phase is Phase.THINKING
    play_reply(c, 1, ["Hi there."], 0.3)
    assert c.phase is Phase.SPEAKING
    assert kinds(c.handle(MarkPlayed(9), 1.0)) == []
    assert c.phase is Phase.LISTENING


def test_no_greeting_configured_means_silence_until_the_caller_speaks() -> None:
    c = Conductor(ConductorConfig(greeting=""), 0.0)
    assert c.handle(Connected(), 0.0) == []
    assert c.phase is Phase.LISTENING


def test_a_caller_turn_requests_a_reply_to_its_words() -> None:
    c = Conductor(ConductorConfig(greeting=""), 0.0)
    c.handle(started(), 1.1)
    c.handle(turn_over(), 2.0)
    assert c.handle(said("  What time is it? "), 2.2) == [RequestReply(1, caller_text="What time is it?")]
    assert c.phase is Phase.THINKING


def test_an_empty_transcript_is_not_a_turn() -> None:
    c = Conductor(ConductorConfig(greeting=""), 0.0)
    assert c.handle(said("   "), 1.0) == []
    assert c.gen == 0 and c.phase is Phase.LISTENING


def test_barge_in_clears_cancels_and_reports_exactly_the_played_words() -> None:
    c = Conductor(ConductorConfig(greeting=""), 0.0)
    c.handle(said("Tell me a story."), 0.0)
    play_reply(c, 1, ["Once upon a time,", "there was a small red fox who lived by the river.", "The end."], 0.5)
    c.handle(MarkPlayed(9), 1.0)  # the first span has played
    # The play-out clock says the caller heard 5 of the second span's 10 frames: half its 49 characters, which
    # reaches past the middle of "fox" (engine.reply_track.words_within).
    actions = barge_in(c, 1.35, played=14)
    assert actions[:3] == [Clear(1), CancelReply(1),
                           ReportHeard(1, "Once upon a time, there was a small red fox")]
    assert c.phase is Phase.INTERRUPTED and c.interruptions == 1
    # Twilio echoes the cleared marks: they are not playback and change nothing.
    assert c.handle(MarkPlayed(19), 1.36) == [] and c.handle(MarkPlayed(29), 1.36) == []
    assert c.phase is Phase.INTERRUPTED
    c.handle(turn_over(), 2.0)
    assert c.handle(said("Stop, tell me about cats."), 2.3) == [
        RequestReply(2, caller_text="Stop, tell me about cats.")]


def test_barge_in_before_any_audio_reports_nothing_heard() -> None:
    c = Conductor(ConductorConfig(greeting=""), 0.0)
    c.handle(said("Hello?"), 0.0)
    actions = barge_in(c, 0.25, played=None)
    assert actions[:3] == [Clear(1), CancelReply(1), ReportHeard(1, "")]


def test_a_short_backchannel_does_not_cut_the_reply_when_a_minimum_is_set() -> None:
    c = Conductor(ConductorConfig(greeting="", barge_in_min_speech_ms=400), 0.0)
    c.handle(said("Explain tides."), 0.0)
    play_reply(c, 1, ["Tides come from the moon's pull.", "Twice a day."], 0.5)
    assert kinds(c.handle(started(), 1.07, played=3)) == []  # "mm-hm" starts, never long enough to be sustained...
    c.handle(turn_over(), 1.8)
    assert kinds(c.handle(said("Mm-hmm."), 1.9)) == []  # ...and is let pass
    assert c.phase is Phase.SPEAKING and c.backchannels == 1
    # Longer speech over the bot does interrupt.
    c.handle(started(), 2.07, played=12)
    actions = c.handle(sustained(), 2.4, played=15)
    assert kinds(actions) == ["Clear", "CancelReply", "ReportHeard"]
    assert c.phase is Phase.INTERRUPTED


def test_speech_interrupts_only_once_the_speech_process_says_it_may() -> None:
    c = Conductor(ConductorConfig(greeting="", barge_in_min_speech_ms=0), 0.0)
    c.handle(said("Explain tides."), 0.0)
    play_reply(c, 1, ["Tides come from the moon."], 0.5)
    assert kinds(c.handle(started(), 1.07, played=3)) == []
    assert kinds(c.handle(sustained(), 1.07, played=3)) == ["Clear", "CancelReply", "ReportHeard"]


def test_keypad_digits_reach_the_llm_on_hash_or_after_a_pause() -> None:
    c = Conductor(ConductorConfig(greeting="", dtmf_timeout_s=2.0), 0.0)
    for d in "12":
        assert c.handle(KeyPressed(d), 1.0) == []
    assert c.handle(KeyPressed("#"), 1.5) == [RequestReply(1, caller_text="[pressed on the keypad: 1 2]")]
    c.handle(MarkPlayed(0), 1.6)
    play_reply(c, 1, ["Got it."], 2.0)
    c.handle(MarkPlayed(9), 2.5)
    c.handle(KeyPressed("7"), 3.0)
    assert c.handle(Tick(), 4.0) == []
    assert c.handle(Tick(), 5.1) == [RequestReply(2, caller_text="[pressed on the keypad: 7]")]


def test_a_keypress_interrupts_the_bot() -> None:
    c = Conductor(ConductorConfig(greeting=""), 0.0)
    c.handle(said("Menu please."), 0.0)
    play_reply(c, 1, ["Press one for sales,", "two for support."], 0.5)
    actions = c.handle(KeyPressed("2"), 1.0, played=9)
    assert actions[:3] == [Clear(1), CancelReply(1), ReportHeard(1, "Press one for sales,")]


def test_an_idle_caller_is_reprompted_then_told_goodbye_and_hung_up_on() -> None:
    cfg = ConductorConfig(greeting="", idle_reprompt_s=5.0, max_reprompts=2)
    c = Conductor(cfg, 0.0)
    assert c.handle(Tick(), 4.9) == []
    assert c.handle(Tick(), 5.0) == [RequestReply(1, say=cfg.reprompt)]
    play_reply(c, 1, [cfg.reprompt], 5.2)
    c.handle(MarkPlayed(9), 6.0)
    assert c.handle(Tick(), 10.9) == []  # idle is counted from the end of the re-prompt
    assert c.handle(Tick(), 11.0) == [RequestReply(2, say=cfg.reprompt)]
    play_reply(c, 2, [cfg.reprompt], 11.2, first_seq=10)
    c.handle(MarkPlayed(19), 12.0)
    assert c.handle(Tick(), 17.0) == [RequestReply(3, say=cfg.goodbye)]
    assert c.phase is Phase.ENDING
    barge_in(c, 17.6, played=20)  # a goodbye is not interrupted
    play_reply(c, 3, [cfg.goodbye], 17.2, first_seq=20)
    assert c.handle(MarkPlayed(29), 19.0) == [HangUp("said goodbye")]
    assert c.phase is Phase.ENDED and c.handle(Tick(), 30.0) == []


def test_speaking_resets_the_reprompt_count() -> None:
    c = Conductor(ConductorConfig(greeting="", idle_reprompt_s=5.0), 0.0)
    c.handle(Tick(), 5.0)
    c.handle(started(), 5.6)
    assert c.reprompts == 0


def test_the_maximum_call_length_ends_the_call_after_a_last_line() -> None:
    cfg = ConductorConfig(greeting="", max_call_s=60.0, idle_reprompt_s=1000)
    c = Conductor(cfg, 0.0)
    c.handle(said("Talk forever."), 50.0)
    play_reply(c, 1, ["On and on,", "and on."], 50.5)
    actions = c.handle(Tick(), 60.0, played=4)
    assert kinds(actions) == ["Clear", "CancelReply", "ReportHeard", "RequestReply"]
    assert actions[-1] == RequestReply(2, say=cfg.time_limit)
    assert c.phase is Phase.ENDING
    # If the last line never plays (no TTS), the call is still ended.
    assert c.handle(Tick(), 60.0 + cfg.ending_timeout_s) == [HangUp("last line did not finish playing")]


def test_a_reply_that_never_comes_gets_an_apology_spoken_without_the_llm() -> None:
    cfg = ConductorConfig(greeting="", reply_timeout_s=8.0)
    c = Conductor(cfg, 0.0)
    c.handle(said("Hello?"), 1.0)
    assert c.handle(Tick(), 8.9) == []
    actions = c.handle(Tick(), 9.0)
    assert kinds(actions) == ["Clear", "CancelReply", "ReportHeard", "Speak"]
    assert actions[-1] == Speak(2, cfg.apology)


def test_an_llm_restart_before_any_audio_retries_the_turn_once() -> None:
    cfg = ConductorConfig(greeting="")
    c = Conductor(cfg, 0.0)
    c.handle(said("What is two plus two?"), 1.0)
    actions = c.handle(PeerRestarted("llm"), 1.5)
    assert kinds(actions) == ["RestoreHistory", "Clear", "CancelReply", "ReportHeard", "RequestReply"]
    assert actions[0] == RestoreHistory(())  # the question is not in it: it is asked again
    assert actions[-1] == RequestReply(2, caller_text="What is two plus two?")
    actions = c.handle(PeerRestarted("llm"), 2.5)  # again: no endless retries
    assert actions[-1] == Speak(3, cfg.apology)


def test_a_tts_restart_mid_reply_reports_what_was_heard_and_apologises() -> None:
    cfg = ConductorConfig(greeting="")
    c = Conductor(cfg, 0.0)
    c.handle(said("Hi."), 0.0)
    play_reply(c, 1, ["Hello there,", "how are you?"], 0.5)
    c.handle(MarkPlayed(9), 1.0)
    actions = c.handle(PeerRestarted("tts"), 1.2, played=9)
    assert [a for a in actions if not isinstance(a, Note)] == [
        Clear(1), CancelReply(1), ReportHeard(1, "Hello there,"), Speak(2, cfg.apology)]


def test_a_restart_that_touches_nothing_in_flight_is_not_noticed() -> None:
    c = Conductor(ConductorConfig(greeting=""), 0.0)
    for proc in ("llm", "tts", "speech"):  # a new LLM is only told the call's dialogue (none yet)
        told = [RestoreHistory(())] if proc == "llm" else []
        assert c.handle(PeerRestarted(proc), 1.0) == told  # type: ignore[arg-type]
    assert c.phase is Phase.LISTENING


def test_a_speech_restart_mid_turn_asks_the_caller_to_repeat() -> None:
    cfg = ConductorConfig(greeting="")
    c = Conductor(cfg, 0.0)
    c.handle(started(), 1.1)
    actions = c.handle(PeerRestarted("speech"), 1.5)
    assert actions[-1] == Speak(1, cfg.missed)


def test_hanging_up_ends_everything() -> None:
    c = Conductor(ConductorConfig(greeting=""), 0.0)
    c.handle(said("Hi."), 0.0)
    assert c.handle(HungUp(), 0.5) == []
    assert c.phase is Phase.ENDED
    assert c.handle(said("Hello?"), 0.6) == [] and c.handle(Tick(), 1000.0) == []


def test_spans_of_an_old_reply_are_ignored() -> None:
    c = Conductor(ConductorConfig(greeting=""), 0.0)
    c.handle(said("One."), 0.0)
    barge_in(c, 0.1)
    c.handle(said("Two."), 0.5)
    c.handle(span(1, 0, 0, 9, "Stale.", True), 0.6)
    assert c.handle(MarkPlayed(9), 0.7) == []
    assert c.phase is Phase.THINKING


def at_pause(text: str) -> Transcript:
    """The transcript the speech process makes at the caller's first pause, before the turn is over."""
    return Transcript(call_id=CALL, turn=1, text=text, final=False, speculative=True, speech_end_t_ns=0,
                      audio_ms=0, stt_ms=0)


def test_a_reply_starts_at_the_pause_and_plays_once_the_turn_ends_as_transcribed() -> None:
    c = Conductor(ConductorConfig(greeting=""), 0.0)
    c.handle(started(), 1.0)
    assert c.handle(at_pause("What time do you open?"), 1.3) == [
        RequestReply(1, caller_text="What time do you open?", provisional=True)]
    assert c.phase is Phase.LISTENING  # nothing is said until the turn is over
    assert c.handle(Tick(), 1.4) == []
    c.handle(turn_over(), 1.6)
    assert kinds(c.handle(said("what time do you open"), 1.6)) == ["CommitReply"]  # case and punctuation aside
    assert c.phase is Phase.THINKING
    play_reply(c, 1, ["We open at nine."], 1.7)
    assert c.phase is Phase.SPEAKING
    assert c.provisional == {"started": 1, "committed": 1, "discarded": 0}


def test_a_caller_who_goes_on_voids_the_reply_started_at_the_pause() -> None:
    c = Conductor(ConductorConfig(greeting=""), 0.0)
    c.handle(started(), 1.0)
    c.handle(at_pause("I would like"), 1.3)
    assert kinds(c.handle(SpeechResumed(call_id=CALL, turn=1), 1.5)) == ["CancelReply", "DiscardReply"]
    # The next pause starts another; the end of the turn commits that one.
    assert c.handle(at_pause("I would like a table for two."), 2.5)[-1] == RequestReply(
        2, caller_text="I would like a table for two.", provisional=True)
    c.handle(turn_over(), 2.8)
    assert c.handle(said("I would like a table for two."), 2.8)[0] == CommitReply(2)


def test_a_final_transcript_that_differs_replaces_the_reply_started_at_the_pause() -> None:
    c = Conductor(ConductorConfig(greeting=""), 0.0)
    c.handle(at_pause("Book a table"), 1.3)
    c.handle(turn_over(), 1.6)
    actions = c.handle(said("Book a table for Friday."), 1.6)
    assert [a for a in actions if not isinstance(a, Note)] == [
        CancelReply(1), DiscardReply(1), RequestReply(2, caller_text="Book a table for Friday.")]
    assert c.provisional["discarded"] == 1


def test_no_reply_starts_at_a_pause_when_speculation_is_off_or_the_bot_is_talking() -> None:
    off = Conductor(ConductorConfig(greeting="", speculative_reply=False), 0.0)
    assert off.handle(at_pause("Hello?"), 1.0) == []
    busy = Conductor(ConductorConfig(greeting=""), 0.0)
    busy.handle(said("Tell me a story."), 0.0)
    play_reply(busy, 1, ["Once upon a time."], 0.5)
    assert busy.handle(at_pause("Mm-hmm"), 1.0) == []  # said over the bot: not a turn to answer


def test_a_restart_drops_the_reply_started_at_the_pause_and_the_turn_is_answered_afresh() -> None:
    c = Conductor(ConductorConfig(greeting=""), 0.0)
    c.handle(at_pause("Hello there."), 1.0)
    assert kinds(c.handle(PeerRestarted("llm"), 1.1)) == ["RestoreHistory", "CancelReply", "DiscardReply"]
    c.handle(turn_over(), 1.3)
    assert c.handle(said("Hello there."), 1.3) == [RequestReply(2, caller_text="Hello there.")]


def test_the_llm_may_read_the_dialogue_in_as_soon_as_the_caller_starts_a_turn() -> None:
    c = Conductor(ConductorConfig(greeting=""), 0.0)
    assert c.handle(started(), 1.0) == [PrepareReply()]
    c.handle(said("Tell me a story."), 2.0)
    play_reply(c, 1, ["Once upon a time,", "a fox."], 2.5)
    assert c.handle(started(), 3.0, played=3) == []  # over the bot: not a turn to answer yet
    actions = c.handle(sustained(), 3.1, played=3)
    assert isinstance(actions[-1], PrepareReply) and isinstance(actions[2], ReportHeard)  # after what was heard
