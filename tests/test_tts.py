"""TTS with the real voices: intelligible audio in the outbound ring, marks and spans that line up, cancel."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.codec import StreamResampler
from engine.stt import WhisperTranscriber, resolve_model
from engine.tts import EspeakTts, PiperTts
from ipc.pool import Lease
from ipc.ring import FLAG_END, FLAG_MARK, RingReader, flags_gen, gen_flags
from ipc.schema import Cancel, Sentence, Spoken
from tests.speech_helpers import phone_path, words
from tools.solo import SoloChild


@pytest.fixture(scope="module")
def tts() -> Iterator[SoloChild]:
    h = SoloChild("tts")
    yield h
    h.close()


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> WhisperTranscriber:
    return WhisperTranscriber(resolve_model("tiny.en", tmp_path_factory.mktemp("m")))


def start_call(h: SoloChild, call_id: str) -> tuple[Lease, RingReader]:
    """Start a call with the TTS; the reader plays the transport's part on its outbound ring."""
    lease = h.start_call(call_id)
    return lease, RingReader(h.pool.outbound[lease.slot], lease.epoch)


def drain(reader: RingReader, frames: list, seconds: float) -> None:  # type: ignore[type-arg]
    """Play the transport's part: consume the outbound ring (it only holds 1.28 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        while (f := reader.read()) is not None:
            frames.append(f)
        time.sleep(0.01)


def test_sentences_become_intelligible_audio_with_marks_and_spans(tts: SoloChild,
                                                                   whisper: WhisperTranscriber) -> None:
    lease, reader = start_call(tts, "CA-t")
    try:
        texts = ["Thank you for calling.", "Your table for four is booked for Friday evening."]
        for i, text in enumerate(texts):
            tts.send(Sentence(call_id="CA-t", gen=1, index=i, text=text, last=i == len(texts) - 1), "llm")
        frames: list = []  # type: ignore[type-arg]
        spans: list[Spoken] = []
        deadline = time.monotonic() + 30
        while len(spans) < 2 and time.monotonic() < deadline:
            drain(reader, frames, 0.2)
            spans += tts.messages("transport", Spoken, 0.05)
        drain(reader, frames, 0.5)
        assert [(s.gen, s.index, s.text, s.last) for s in spans] == [(1, 0, texts[0], False), (1, 1, texts[1], True)]
        by_seq = {f.seq: f for f in frames}
        assert spans[0].seq_last < spans[1].seq_first and spans[1].seq_last == frames[-1].seq
        assert all(flags_gen(f.flags) == 1 for f in frames)  # every frame says which reply it belongs to
        assert by_seq[spans[0].seq_last].flags == gen_flags(1) | FLAG_MARK  # a mark after each sentence ...
        assert by_seq[spans[1].seq_last].flags == gen_flags(1) | FLAG_MARK | FLAG_END  # ... and the reply's end
        rate = frames[0].sample_rate
        audio = np.frombuffer(b"".join(f.payload for f in frames), np.int16)
        assert len(audio) / rate > 2.0
        resampler = StreamResampler(rate, 8000)  # what the caller hears: 8 kHz μ-law
        heard8k = np.concatenate([resampler.process(audio[i:i + rate // 50]) for i in range(0, len(audio), rate // 50)])
        text = whisper.transcribe(phone_path(heard8k).astype(np.float32) / 32768)
        assert len({"thank", "calling", "table", "booked", "friday", "evening"} & words(text)) >= 5, text
    finally:
        tts.end_call(lease)


def test_a_call_whose_ring_is_full_holds_up_no_other_calls_speech(tts: SoloChild) -> None:
    stuck, _ = start_call(tts, "CA-full")  # its ring is never drained: it fills, then stays full
    lease, reader = start_call(tts, "CA-next")
    try:
        long = " ".join(["This answer goes on and on, far longer than its ring holds."] * 4)
        tts.send(Sentence(call_id="CA-full", gen=1, index=0, text=long, last=True), "llm")
        ring = tts.pool.outbound[stuck.slot]
        deadline = time.monotonic() + 20
        while ring.stats().backlog < ring.slots - 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ring.stats().backlog >= ring.slots - 8  # full (but for the headroom): it can take no more now
        tts.send(Sentence(call_id="CA-next", gen=1, index=0, text="Hello there.", last=True), "llm")
        frames: list = []  # type: ignore[type-arg]
        spans: list[Spoken] = []
        deadline = time.monotonic() + 2  # well before the stuck call is given up on (STALL_S, 3 s)
        while not (spans and frames) and time.monotonic() < deadline:  # the span may come told early, with
            drain(reader, frames, 0.1)                                  # its first frame: wait for both
            spans += [s for s in tts.messages("transport", Spoken, 0.05) if s.call_id == "CA-next"]
        assert [s.text for s in spans] == ["Hello there."] and frames
        # Nobody drains the stuck ring: after STALL_S its call gets no more speech, and the TTS goes on.
        time.sleep(3.5)
        written = ring.stats().written
        tts.send(Sentence(call_id="CA-full", gen=2, index=0, text="Anyone there?", last=True), "llm")
        tts.send(Sentence(call_id="CA-next", gen=2, index=0, text="Still here.", last=True), "llm")
        spans = []
        deadline = time.monotonic() + 10
        while not spans and time.monotonic() < deadline:
            drain(reader, frames, 0.1)
            spans += [s for s in tts.messages("transport", Spoken, 0.05) if s.call_id == "CA-next"]
        assert [s.text for s in spans] == ["Still here."]
        assert ring.stats().written == written
    finally:
        tts.end_call(lease)
        tts.end_call(stuck)


def test_cancel_stops_the_reply_within_a_frame(tts: SoloChild) -> None:
    lease, reader = start_call(tts, "CA-x")
    try:
        for i in range(6):
            tts.send(Sentence(call_id="CA-x", gen=3, index=i, text=f"This is sentence number {i + 1} of a long "
                              "answer that the caller is about to interrupt.", last=i == 5), "llm")
        frames: list = []  # type: ignore[type-arg]
        while not frames:
            drain(reader, frames, 0.05)
        tts.send(Cancel(call_id="CA-x", gen=3), "transport")
        drain(reader, frames, 0.3)
        ring = tts.pool.outbound[lease.slot]
        written_at_cancel = ring.stats().written
        drain(reader, frames, 2.0)
        assert ring.stats().written - written_at_cancel <= 1
        assert not any(f.flags & FLAG_END for f in frames)  # the reply never reached its end
        spans = [s for s in tts.messages("transport", Spoken, 0.5) if s.call_id == "CA-x"]
        assert all(s.index < 5 for s in spans)
    finally:
        tts.end_call(lease)


@pytest.mark.parametrize("backend", [PiperTts, EspeakTts])
def test_backends_stream_and_can_be_abandoned(backend: type) -> None:
    tts = backend()
    chunks = tts.synthesize("One. Two. Three. Four. Five. Six.")
    first = next(chunks)
    assert first.dtype == np.int16 and len(first) > 0 and tts.sample_rate in (16000, 22050, 24000)
    chunks.close()  # cancel mid-stream: espeak's process is killed, Piper stops between sentences


def test_the_espeak_floor_is_intelligible_too(whisper: WhisperTranscriber, tmp_path: Path) -> None:
    tts = EspeakTts()
    audio = np.concatenate(list(tts.synthesize("Please wait a moment while I check.")))
    pcm16k = StreamResampler(tts.sample_rate, 16000).process(audio)
    text = whisper.transcribe(pcm16k.astype(np.float32) / 32768)
    assert len({"please", "wait", "moment", "check"} & words(text)) >= 3, text
