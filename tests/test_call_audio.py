"""One call's audio path without sockets: inbound to the ring, outbound paced with marks, clear."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from engine.call_audio import CallAudio
from engine.codec import StreamResampler, mulaw_to_pcm16, pcm16_to_mulaw
from engine.pacing import OutboundPacer
from ipc.pool import RingPool
from ipc.ring import FLAG_END, FLAG_MARK, RingReader, RingWriter, gen_flags


@pytest.fixture
def pool(make_pool):
    return make_pool(max_calls=1, slots=64, capacity=1920)


def make_call(pool: RingPool, inbound_rate: int = 16000, lead_s: float = 0.2) -> tuple[CallAudio, list]:
    lease = pool.lease("CA1")
    assert lease is not None
    recorded: list[tuple[str, bytes]] = []
    audio = CallAudio("MZ1", RingWriter(pool.inbound[0], lease.epoch), RingReader(pool.outbound[0], lease.epoch),
                      inbound_rate=inbound_rate, lead_s=lead_s, record=lambda d, b: recorded.append((d, b)))
    return audio, recorded


def tone(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq * t) * 10000).astype(np.int16)


def test_pacer_keeps_the_lead_and_never_drifts() -> None:
    p = OutboundPacer(lead_s=0.1)
    sent = 0
    while p.may_send(0.0):
        p.sent(0.0)
        sent += 1
    assert sent == 5 and p.queued_s(0.0) == pytest.approx(0.1)
    assert p.next_send_at() == pytest.approx(0.02)
    assert p.may_send(0.02) and not p.may_send(0.019)
    p.reset(1.0)
    assert p.queued_s(1.0) == 0 and p.may_send(1.0)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_inbound_media_reaches_the_ring_exactly(pool: RingPool, rate: int) -> None:
    audio, recorded = make_call(pool, inbound_rate=rate)
    mulaw = pcm16_to_mulaw(tone(8000, 1.0))
    for i in range(0, len(mulaw), 160):
        audio.on_media(mulaw[i:i + 160], t_ns=i)
    reader = RingReader(pool.inbound[0])
    got = b"".join(f.payload for f in iter(reader.read, None))
    expected = StreamResampler(8000, rate)
    want = b"".join(expected.process(mulaw_to_pcm16(mulaw[i:i + 160])).tobytes() for i in range(0, len(mulaw), 160))
    assert got == want and len(got) > 0
    assert b"".join(b for d, b in recorded if d == "inbound") == mulaw_to_pcm16(mulaw).tobytes()


def test_outbound_is_paced_marked_and_flushed(pool: RingPool) -> None:
    audio, recorded = make_call(pool, lead_s=0.1)
    tts = RingWriter(pool.outbound[0])
    speech = tone(22050, 0.5)
    frames = [speech[i:i + 441] for i in range(0, len(speech), 441)]
    for i, frame in enumerate(frames):
        flags = (FLAG_MARK if i in (9, len(frames) - 1) else 0) | (FLAG_END if i == len(frames) - 1 else 0)
        tts.write(frame.tobytes(), 22050, flags=flags)
    assert audio.pull() == len(frames)
    now, sent = 0.0, []
    while True:
        batch = audio.due_messages(now)
        assert audio.pacer.queued_s(now) <= 0.1 + 1e-9
        sent += [json.loads(m) for m in batch]
        due = audio.next_due_at()
        if due is None:
            break
        now = max(now, due)
    media = [m for m in sent if m["event"] == "media"]
    marks = [(i, m["mark"]["name"]) for i, m in enumerate(sent) if m["event"] == "mark"]
    assert all(len(base64.b64decode(m["media"]["payload"])) == 160 for m in media)
    # 0.5 s of audio + the flushed filter tail, padded to whole 20 ms frames
    assert 25 <= len(media) <= 28
    assert [name for _, name in marks] == ["9", str(len(frames) - 1)]
    assert marks[-1][0] == len(sent) - 1  # the last mark follows all the audio
    first_mark_at = marks[0][0]
    audio_before = sum(1 for m in sent[:first_mark_at] if m["event"] == "media")
    assert 9 <= audio_before <= 11  # 10 frames of 20 ms went in before the mark, ±1 for filter lag
    heard = np.concatenate([mulaw_to_pcm16(base64.b64decode(m["media"]["payload"])) for m in media])
    assert b"".join(b for d, b in recorded if d == "outbound") == heard.tobytes()
    ref = StreamResampler(22050, 8000)
    want = mulaw_to_pcm16(pcm16_to_mulaw(np.concatenate([ref.process(f) for f in frames])))
    assert np.array_equal(heard[:len(want)], want)


def test_clear_drops_everything_unsent(pool: RingPool) -> None:
    audio, _ = make_call(pool, lead_s=0.1)
    tts = RingWriter(pool.outbound[0])
    for i, frame in enumerate(np.split(tone(22050, 1.0), 50)):
        tts.write(frame.tobytes(), 22050, flags=FLAG_MARK if i % 10 == 9 else 0)
    audio.pull()
    first = audio.due_messages(0.0)
    assert len(first) == 5
    assert json.loads(audio.clear(0.05)) == {"event": "clear", "streamSid": "MZ1"}
    tts.write(tone(22050, 0.02).tobytes(), 22050)  # a frame the TTS wrote before it heard the cancel
    audio.outbound.discard_all()
    audio.pull()
    assert audio.due_messages(10.0) == [] and audio.next_due_at() is None


def test_a_cleared_reply_never_plays_even_if_its_frames_come_late(pool: RingPool) -> None:
    audio, _ = make_call(pool, lead_s=0.1)
    tts = RingWriter(pool.outbound[0])
    for frame in np.split(tone(16000, 0.2), 10):
        tts.write(frame.tobytes(), 16000, flags=gen_flags(2))
    audio.pull()
    audio.due_messages(0.0)
    audio.clear(0.05, gen=2)
    # The TTS wrote two more frames of reply 2 before its Cancel landed, then reply 3 begins.
    # Reply 2 is a loud tone; reply 3 is silence, so any of reply 2 that slipped through would be heard.
    for gen in (2, 2):
        tts.write(tone(16000, 0.02).tobytes(), 16000, flags=gen_flags(gen))
    tts.write(np.zeros(320, np.int16).tobytes(), 16000, flags=gen_flags(3) | FLAG_END)
    assert audio.pull() == 3
    assert audio.frames_dropped_cleared == 2
    media = [json.loads(m) for m in audio.due_messages(10.0)]
    heard = np.concatenate([mulaw_to_pcm16(base64.b64decode(m["media"]["payload"])) for m in media
                            if m["event"] == "media"])
    assert len(heard) >= 160 and np.abs(heard.astype(np.int32)).max() < 50


def test_the_play_out_clock_says_which_frame_the_caller_heard_last(pool: RingPool) -> None:
    audio, _ = make_call(pool, lead_s=0.2)
    tts = RingWriter(pool.outbound[0])
    for frame in np.split(tone(8000, 0.4), 20):  # 8 kHz: no resampler lag to allow for
        tts.write(frame.tobytes(), 8000, flags=gen_flags(1))
    audio.pull()
    assert audio.played_seq(0.0) is None
    audio.due_messages(0.0)  # 10 frames (200 ms) sent at t=0, played 0-200 ms
    assert audio.gens_started == [1]
    assert audio.played_seq(0.001) is None
    assert audio.played_seq(0.041) == 1  # frames 0 and 1 have played
    assert audio.played_seq(0.2) == 9
    audio.due_messages(0.25)  # by now the caller would have gone quiet: the rest starts at 0.25
    assert audio.played_seq(0.25) == 9
    assert audio.played_seq(0.31) == 12


def test_inbound_frames_behind_the_lines_schedule_are_counted_late(pool: RingPool) -> None:
    audio, _ = make_call(pool)
    frame = pcm16_to_mulaw(tone(8000, 0.02))
    ms = 1_000_000
    # On time for 10 frames (arrival jitter of a few ms), then the socket stalls 150 ms and delivers a backlog.
    arrivals = [(i * 20, 1000 * ms + i * 20 * ms + (i % 3) * ms) for i in range(10)]
    arrivals += [(i * 20, 1000 * ms + 350 * ms) for i in range(10, 20)]
    for ts, t_ns in arrivals:
        audio.on_media(frame, t_ns=t_ns, timestamp_ms=ts)
    # Frames 10..19 were due at 200..380 ms and arrived at 350 ms: those more than 60 ms behind are late.
    assert audio.inbound_late == sum(1 for i in range(10, 20) if 350 - i * 20 > 60)
    assert audio.inbound_max_late_ms == pytest.approx(150.0)
    assert audio.last_timestamp_ms == 380 and audio.frames_in == 20


def test_outbound_ring_gaps_are_counted_but_a_clear_is_not_a_gap(pool: RingPool) -> None:
    audio, _ = make_call(pool)
    tts = RingWriter(pool.outbound[0])
    frame = tone(22050, 0.02).tobytes()
    for _ in range(3):
        tts.write(frame, 22050, flags=gen_flags(1))
    audio.pull()
    for _ in range(4):
        tts.write(frame, 22050, flags=gen_flags(1))
    audio.clear(0.0, gen=1)  # the 4 unread frames are discarded on purpose
    tts.write(frame, 22050, flags=gen_flags(2))
    audio.pull()
    assert audio.outbound_gaps == 0
    # A full ring refuses frames (counted as drops): the reader sees the sequence jump.
    written = 0
    while tts.write(frame, 22050, flags=gen_flags(2)):
        written += 1
    refused = 3
    for _ in range(refused - 1):
        tts.write(frame, 22050, flags=gen_flags(2))
    audio.pull()
    tts.write(frame, 22050, flags=gen_flags(2))
    audio.pull()
    assert audio.outbound_gaps == refused


def test_a_held_reply_is_taken_from_the_ring_but_sent_only_once_released(pool: RingPool) -> None:
    audio, _ = make_call(pool, lead_s=0.1)
    tts = RingWriter(pool.outbound[0])
    audio.hold(4)
    for i, frame in enumerate(np.split(tone(16000, 0.4), 20)):
        tts.write(frame.tobytes(), 16000, flags=gen_flags(4) | (FLAG_MARK if i == 19 else 0))
    assert audio.pull() == 20 and audio.outbound.ring.available() == 0  # the TTS never waits on a held reply
    assert audio.due_messages(0.0) == [] and audio.next_due_at() is None and audio.gens_started == []
    audio.release(4)
    sent = [json.loads(m)["event"] for m in audio.due_messages(1.0)]
    assert sent == ["media"] * 5 and audio.gens_started == [4]  # at once, paced as any reply


def test_a_discarded_held_reply_is_never_sent_and_needs_no_clear(pool: RingPool) -> None:
    audio, _ = make_call(pool, lead_s=0.1)
    tts = RingWriter(pool.outbound[0])
    audio.hold(4)
    for frame in np.split(tone(16000, 0.2), 10):
        tts.write(frame.tobytes(), 16000, flags=gen_flags(4))
    audio.pull()
    audio.discard(0.5, 4)
    tts.write(tone(16000, 0.02).tobytes(), 16000, flags=gen_flags(4))  # written before the TTS heard the cancel
    tts.write(np.zeros(320, np.int16).tobytes(), 16000, flags=gen_flags(5) | FLAG_END)
    audio.pull()
    media = [json.loads(m) for m in audio.due_messages(10.0)]
    assert media and {m["event"] for m in media} == {"media"} and audio.held_gen is None
    assert audio.frames_dropped_cleared == 1
    assert not any(mulaw_to_pcm16(base64.b64decode(m["media"]["payload"])).any() for m in media)  # reply 5's


def caller_frames(seconds: float) -> list[bytes]:
    """Twilio's 20 ms μ-law frames of a tone, each different from the last."""
    mulaw = pcm16_to_mulaw(tone(8000, seconds, freq=313.0))
    return [mulaw[i:i + 160] for i in range(0, len(mulaw), 160)]


def test_a_ring_nobody_reads_for_3_s_loses_nothing_once_read_again(pool: RingPool) -> None:
    """The speech process restarting: 3 s of caller audio arrive while nobody reads a 1.28 s ring. They wait in
    the spill and reach the ring, in order and with their arrival times, once it is read again."""
    audio, _ = make_call(pool)
    frames = caller_frames(4.0)
    resampler = StreamResampler(8000, 16000)
    expected = [(pcm, i) for i, f in enumerate(frames) if (pcm := resampler.process(mulaw_to_pcm16(f)).tobytes())]
    reader = RingReader(pool.inbound[0])
    for i, frame in enumerate(frames[:150]):  # 3 s: the reader is down
        audio.on_media(frame, t_ns=i)
    assert audio.inbound_dropped == 0 and audio.inbound_spilled == sum(i < 150 for _, i in expected) - 64
    got = []
    for i, frame in enumerate(frames[150:], start=150):  # a restarted reader resumes at the read index
        got += list(iter(reader.read, None))
        audio.on_media(frame, t_ns=i)
    got += list(iter(reader.read, None))
    assert audio.spill_frames == 0
    assert [(f.payload, f.t_ns) for f in got] == expected
    assert audio.inbound_dropped == 0 and pool.inbound[0].stats().drops == 0


def test_past_the_spill_the_oldest_waiting_frames_are_dropped_and_counted(pool: RingPool) -> None:
    lease = pool.lease("CA1")
    assert lease is not None
    audio = CallAudio("MZ1", RingWriter(pool.inbound[0], lease.epoch), RingReader(pool.outbound[0], lease.epoch),
                      inbound_rate=16000, lead_s=0.2, spill_s=1.0)
    frames = caller_frames(4.0)
    resampler = StreamResampler(8000, 16000)
    produced = [i for i, f in enumerate(frames) if len(resampler.process(mulaw_to_pcm16(f)))]
    for i, frame in enumerate(frames):  # 4 s, and nobody reads: 1.28 s in the ring, the last 1 s in the spill
        audio.on_media(frame, t_ns=i)
    reader = RingReader(pool.inbound[0])
    got = list(iter(reader.read, None))
    audio.flush_spill()
    got += list(iter(reader.read, None))
    assert [f.t_ns for f in got] == produced[:64] + produced[-50:]
    assert audio.inbound_dropped == len(produced) - 64 - 50
    assert audio.inbound_spilled == len(produced) - 64


def test_with_no_spill_a_full_ring_drops_at_once(pool: RingPool) -> None:
    lease = pool.lease("CA1")
    assert lease is not None
    audio = CallAudio("MZ1", RingWriter(pool.inbound[0], lease.epoch), RingReader(pool.outbound[0], lease.epoch),
                      inbound_rate=16000, lead_s=0.2, spill_s=0)
    for i, frame in enumerate(caller_frames(2.0)):
        audio.on_media(frame, t_ns=i)
    assert audio.inbound_dropped == 99 - 64 == pool.inbound[0].stats().drops and audio.inbound_spilled == 0
