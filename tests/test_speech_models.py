"""The real CPU models: silero VAD (ONNX) and Whisper tiny.en (CTranslate2), through the phone path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.config import SpeechSection
from engine.hearing import Hearing
from engine.stt import WhisperTranscriber, resolve_model
from engine.vad import SileroVad, VadStream
from ipc.schema import EndOfTurn, SpeechStarted, Transcript
from tests.speech_helpers import line_noise, phone_path, silence, spoken, words

SENTENCE = "I would like to book a table for four people on Friday evening."


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> WhisperTranscriber:
    return WhisperTranscriber(resolve_model("tiny.en", tmp_path_factory.mktemp("models")))


def probabilities(vad: SileroVad, audio16k: np.ndarray) -> np.ndarray:
    stream = VadStream(16000)
    x = audio16k.astype(np.float32) / 32768
    return np.array([vad.infer(x[None, i:i + 512], [stream])[0] for i in range(0, len(x) - 511, 512)])


def test_vad_hears_speech_and_not_silence_or_line_noise(vad: SileroVad) -> None:
    speech = probabilities(vad, phone_path(spoken(SENTENCE)))
    quiet = probabilities(vad, phone_path(silence(3)))
    noise = probabilities(vad, phone_path(line_noise(3)))
    print(f"speech windows > 0.5: {np.mean(speech > 0.5):.2f}; "
          f"max p silence {quiet.max():.3f}, noise {noise.max():.3f}")
    assert np.mean(speech > 0.5) > 0.5
    assert quiet.max() < 0.2 and noise.max() < 0.5


def test_batched_inference_equals_one_call_at_a_time(vad: SileroVad) -> None:
    calls = [phone_path(spoken(t)).astype(np.float32) / 32768 for t in ("Hello there.", "What time is it?")]
    n = min(len(c) for c in calls) // 512 * 512
    alone = [[vad.infer(c[None, i:i + 512], [s])[0] for i in range(0, n, 512)]
             for c, s in ((c, VadStream(16000)) for c in calls)]
    streams = [VadStream(16000), VadStream(16000)]
    together = [vad.infer(np.stack([c[i:i + 512] for c in calls]), streams) for i in range(0, n, 512)]
    assert np.allclose(np.array(alone).T, np.array(together), atol=1e-5)


def test_whisper_transcribes_a_phone_call_sentence(whisper: WhisperTranscriber) -> None:
    audio = phone_path(spoken(SENTENCE)).astype(np.float32) / 32768
    text = whisper.transcribe(audio)
    print(text)
    # tiny.en on espeak's robotic voice misses a word now and then (the WER benchmark measures how
    # often); the sentence is recognised when nearly all of its content words are there.
    assert len({"table", "people", "friday", "evening"} & words(text)) >= 3, text
    assert words(text) & {"four", "4", "for"}


@pytest.mark.parametrize("beam", [1, SpeechSection().stt_beam_size])
def test_utterances_ready_together_are_transcribed_in_one_batch_as_they_would_be_alone(
        whisper: WhisperTranscriber, beam: int) -> None:
    short = phone_path(spoken("Yes please.")).astype(np.float32) / 32768
    two = f"{SENTENCE} And could we sit by the window, away from the door?"  # a longer window than the short one's
    long = phone_path(spoken(two)).astype(np.float32) / 32768
    whisper.beam_size = beam  # greedy, and the engine's beam
    try:
        alone = [whisper.transcribe(short), whisper.transcribe(long)]
        together = whisper.transcribe_many([short, long])
    finally:
        whisper.beam_size = 1
    print(alone, together)
    assert together == alone  # the short one's extra silence (the long one's window) changes nothing
    assert "yes" in words(together[0]) and "friday" in words(together[1])


@pytest.mark.parametrize("rate", [16000, 8000])  # transport.inbound_rate: at 8000 Hearing resamples the frames to 16k
def test_hearing_turns_an_utterance_into_one_transcript(vad: SileroVad, whisper: WhisperTranscriber,
                                                        rate: int) -> None:
    """VAD, endpointing and speculative transcription together, with no process around them."""
    # The shared pause: a call alone pauses sooner (speech.solo_pause_ms), and SENTENCE has a gap inside it long
    # enough for that (see the solo-pause test below).
    hearing = Hearing(vad, SpeechSection(solo_pause_ms=SpeechSection().pause_ms), rate, barge_in_ms=0)
    hearing.add_call("CA1")
    audio = phone_path(np.concatenate([line_noise(1.0), spoken(SENTENCE), silence(1.5)]), rate=rate)
    frame = rate // 50
    msgs = []
    t_ns = 0
    for i in range(0, len(audio), frame):  # 20 ms frames, as the ring delivers them
        t_ns += 20_000_000
        hearing.add_audio("CA1", audio[i:i + frame].tobytes(), t_ns)
        while hearing.ears["CA1"].window_ready():
            msgs += hearing.vad_round()
        for job in hearing.take_jobs():  # run each job at once, as the worker thread would
            job.text = whisper.transcribe(job.audio)
            msgs += hearing.finished(job)
    kinds = [type(m).__name__ for m in msgs]
    # The pause's transcript goes out as soon as it is made, provisionally; the end of the turn confirms it.
    assert kinds == ["SpeechStarted", "SpeechSustained", "Transcript", "EndOfTurn", "Transcript"], kinds
    started, _, provisional, end, transcript = msgs
    assert isinstance(provisional, Transcript) and not provisional.final and provisional.speculative
    assert isinstance(transcript, Transcript) and transcript.final and transcript.text == provisional.text
    assert isinstance(started, SpeechStarted) and isinstance(end, EndOfTurn) and isinstance(transcript, Transcript)
    speech_start_s, speech_end_s = 1.0, 1.0 + len(spoken(SENTENCE)) / 8000
    assert abs(started.onset_t_ns / 1e9 - speech_start_s) < 0.3
    assert abs(end.speech_end_t_ns / 1e9 - speech_end_s) < 0.4
    assert transcript.speculative  # started during the silence, kept because no speech followed
    assert len({"table", "people", "friday", "evening"} & words(transcript.text)) >= 3, transcript.text
    speech_ms = 1000 * len(spoken(SENTENCE)) / 8000  # the audio it was made from: the speech, give or take the pads
    assert abs(transcript.audio_ms - speech_ms) < 600, (transcript.audio_ms, speech_ms)


@pytest.mark.parametrize("tier", ["base"])
def test_the_base_tier_is_assembled_verified_and_works(tier: str, tmp_path: Path) -> None:
    model_dir = resolve_model(tier, tmp_path)
    assert (model_dir / "model.bin").stat().st_size > 100_000_000
    assert resolve_model(tier, tmp_path) == model_dir  # second time: already there, not re-joined
    text = WhisperTranscriber(model_dir).transcribe(phone_path(spoken(SENTENCE)).astype(np.float32) / 32768)
    assert len({"table", "people", "friday", "evening"} & words(text)) >= 3, text


@pytest.mark.parametrize(("model", "score", "text", "ends_at_ms"), [
    ("smart-turn", 0.99, "What time do you open?", (150, 200)),  # sounds and reads finished: ends at the pause
    ("smart-turn", 0.10, "What time do you open?", (1000, 1050)),  # sounds unfinished: may pause up to the cap
    ("smart-turn", 0.99, "What time do you", (1000, 1050)),  # does not read finished: may pause up to the cap
    ("off", 0.0, "I'd like a table for.", (1000, 1050)),  # with the model off the text still counts
    ("off", 0.0, "What time do you open?", (500, 550)),  # and otherwise the usual silence ends the turn
])
def test_a_pause_judged_finished_ends_the_turn_and_one_judged_unfinished_waits(
        vad: SileroVad, model: str, score: float, text: str, ends_at_ms: tuple[int, int]) -> None:
    """The verdict logic, with the models' answers given (the turn model's score, the pause's transcript)."""
    cfg = SpeechSection(turn_model=model, turn_incomplete_ms=1000, solo_pause_ms=150)  # type: ignore[arg-type]
    hearing = Hearing(vad, cfg, 16000)
    hearing.add_call("CA1")
    audio = phone_path(np.concatenate([silence(0.5), spoken(SENTENCE), silence(2.0)]))
    speech_end = None
    for i in range(0, len(audio), 320):
        hearing.add_audio("CA1", audio[i:i + 320].tobytes(), (i // 320 + 1) * 20_000_000)
        msgs = []
        while hearing.ears["CA1"].window_ready():
            msgs += hearing.vad_round()
        for job in hearing.take_jobs():  # answered at once, as a worker with no queue would
            if job.judge:
                job.complete = score
            else:
                job.text = text
            msgs += hearing.finished(job)
        ends = [m for m in msgs if isinstance(m, EndOfTurn)]
        if ends:
            speech_end = ends[0].speech_end_t_ns
            now_ms = (i // 320 + 1) * 20 - speech_end / 1e6
            assert ends_at_ms[0] <= now_ms <= ends_at_ms[1] + 32, now_ms
            break
    assert speech_end is not None


def test_a_transcript_hears_past_where_the_silence_began(vad: SileroVad) -> None:
    """Weak last sounds ("coins") fade below the VAD before they end: Whisper gets speech.suffix_pad_ms more,
    audio already in hand at the pause. The turn still ends, for latency, where the speech stopped."""
    cfg = SpeechSection(turn_model="off", solo_pause_ms=SpeechSection().pause_ms)  # a full suffix_pad_ms at the pause
    hearing = Hearing(vad, cfg, 16000, barge_in_ms=0)
    hearing.add_call("CA1")
    audio = phone_path(np.concatenate([line_noise(1.0), spoken(SENTENCE), silence(1.5)]))
    jobs = []
    for i in range(0, len(audio), 320):
        hearing.add_audio("CA1", audio[i:i + 320].tobytes(), (i // 320 + 1) * 20_000_000)
        while hearing.ears["CA1"].window_ready():
            hearing.vad_round()
        jobs += [j for j in hearing.take_jobs() if not j.judge]
    assert jobs and cfg.suffix_pad_ms > 0
    pad = cfg.suffix_pad_ms * 16000 // 1000
    for job in jobs:
        assert len(job.audio) == job.end - job.start + pad


def test_a_call_alone_pauses_sooner_and_calls_beside_others_wait_the_shared_pause(
        vad: SileroVad, whisper: WhisperTranscriber) -> None:
    """speech.solo_pause_ms while one call is heard; speech.pause_ms for every call once there are more. At the
    shorter pause SENTENCE's gap inside it is transcribed too, then thrown away when the caller talks on."""
    cfg = SpeechSection(turn_model="off", pause_ms=150, solo_pause_ms=64)
    hearing = Hearing(vad, cfg, 16000, barge_in_ms=0)
    hearing.add_call("CA1")
    assert hearing.ears["CA1"].endpointer.pause_ms == 64
    hearing.add_call("CA2")
    assert [ear.endpointer.pause_ms for ear in hearing.ears.values()] == [150, 150]
    hearing.end_call("CA2")
    assert hearing.ears["CA1"].endpointer.pause_ms == 64
    audio = phone_path(np.concatenate([line_noise(1.0), spoken(SENTENCE), silence(1.5)]))
    msgs = []
    for i in range(0, len(audio), 320):
        hearing.add_audio("CA1", audio[i:i + 320].tobytes(), (i // 320 + 1) * 20_000_000)
        while hearing.ears["CA1"].window_ready():
            msgs += hearing.vad_round()
        for job in hearing.take_jobs():
            job.text = whisper.transcribe(job.audio)
            msgs += hearing.finished(job)
    kinds = [type(m).__name__ for m in msgs]
    assert "SpeechResumed" in kinds and kinds.count("EndOfTurn") == 1, kinds
    assert kinds[-1] == "Transcript" and msgs[-1].final  # type: ignore[attr-defined]
