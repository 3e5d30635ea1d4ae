"""The real transport process against synthetic Twilio callers; the test plays the other processes."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import wave
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from twilio.request_validator import RequestValidator

from engine.codec import StreamResampler, mulaw_to_pcm16, pcm16_to_mulaw
from ipc.ring import FLAG_END, FLAG_MARK, RingReader, RingWriter, gen_flags
from ipc.schema import CallEnded, Commit, EndOfTurn, Respond, SpeechStarted, Transcript
from procs.phone_call import IDLE_RECHECK_S
from tests.transport_harness import AUTH_TOKEN, PUBLIC_URL, TransportHarness
from tools.caller import SyntheticCaller, speech_from_text, twilio_signature

SENTENCE = ("Hello, my name is Alice Johnson. I would like to book a table for four people "
            "on the twelfth of March at seven thirty in the evening.")


@pytest.fixture
def harness(tmp_path: Path):
    h = TransportHarness(tmp_path)
    yield h
    h.close()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 5 s of caller speech, already μ-law-exact so the ring can be compared bit for bit."""
    pcm = speech_from_text(SENTENCE, rate=8000)
    return mulaw_to_pcm16(pcm16_to_mulaw(pcm))


def caller(h: TransportHarness) -> SyntheticCaller:
    return SyntheticCaller(h.base_url, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN)


def expected_inbound(pcm8k: np.ndarray, rate: int) -> bytes:
    """What the inbound ring must hold: the caller's frames (the last padded with silence, as sent), resampled."""
    pcm8k = np.concatenate([pcm8k, np.zeros(-len(pcm8k) % 160, np.int16)])
    resampler = StreamResampler(8000, rate)
    return b"".join(resampler.process(pcm8k[i:i + 160]).tobytes() for i in range(0, len(pcm8k), 160))


async def drain(reader: RingReader, into: bytearray, stop: asyncio.Event) -> None:
    """The test's stand-in for the speech process: keep the inbound ring empty."""
    while True:
        while (frame := reader.read()) is not None:
            into += frame.payload
        if stop.is_set():
            return
        await asyncio.sleep(0.02)


def post_form(url: str, params: dict[str, str], signature: str | None) -> tuple[int, str]:
    data = urllib.parse.urlencode(params).encode()
    request = urllib.request.Request(url, data=data, headers={"X-Twilio-Signature": signature} if signature else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_webhook_answers_signed_requests_and_refuses_the_rest(harness: TransportHarness) -> None:
    params = {"CallSid": "CA" + "1" * 32, "From": "+15550001111", "To": "+15550002222", "CallStatus": "ringing"}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + "/twilio/voice", params)
    code, body = post_form(harness.base_url + "/twilio/voice", params, signature)
    assert code == 200 and 'url="wss://voice.example.test/twilio/stream"' in body
    assert '<Parameter name="token"' in body
    assert post_form(harness.base_url + "/twilio/voice", {**params, "From": "+1999"}, signature)[0] == 403
    assert post_form(harness.base_url + "/twilio/voice", params, None)[0] == 403
    status = {"CallSid": params["CallSid"], "CallStatus": "completed"}
    status_sig = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + "/twilio/status", status)
    assert post_form(harness.base_url + "/twilio/status", status, status_sig)[0] == 204
    assert post_form(harness.base_url + "/twilio/status", status, signature)[0] == 403
    # A body that is not UTF-8 form data (found by tests/test_fuzz.py: it was a 500) is refused as malformed.
    request = urllib.request.Request(harness.base_url + "/twilio/voice", data=bytes(range(256)),
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 400


@pytest.mark.parametrize("rate", [16000, 8000])
def test_caller_speech_reaches_the_inbound_ring_exactly(tmp_path: Path, speech: np.ndarray, rate: int) -> None:
    h = TransportHarness(tmp_path, ENGINE_TRANSPORT__INBOUND_RATE=str(rate))
    try:
        got = bytearray()

        async def scenario() -> None:
            async with caller(h) as c:
                await c.connect(await c.dial())
                started = await asyncio.to_thread(h.call_started)
                assert started.call_id == c.call_sid and started.inbound_rate == rate
                stop = asyncio.Event()
                reader = RingReader(h.pool.inbound[started.slot], started.epoch)
                drainer = asyncio.create_task(drain(reader, got, stop))
                await c.send_audio(speech)
                await asyncio.sleep(0.3)
                stop.set()
                await drainer
                await c.hangup()
            ended = await asyncio.to_thread(h.wait_for, "speech", CallEnded, 10.0)
            assert ended.call_id == started.call_id and "hung up" in ended.reason
            assert h.pool.inbound[started.slot].stats().drops == 0

        asyncio.run(scenario())
        assert len(speech) >= 8000 * 4
        assert bytes(got) == expected_inbound(speech, rate)
        (call_dir,) = list(h.recordings.iterdir())
        wait_recording_closed(call_dir)
        with wave.open(str(call_dir / "inbound.wav")) as w:
            assert w.getframerate() == 8000
            recorded = w.readframes(w.getnframes())
        assert recorded.rstrip(b"\0") == speech.tobytes().rstrip(b"\0")  # what the caller said, as received
    finally:
        h.close()


def test_bot_audio_reaches_the_caller_with_its_marks(harness: TransportHarness) -> None:
    rate = 22050
    t = np.arange(int(rate * 2.0)) / rate
    bot = (np.sin(2 * np.pi * 330 * t) * 8000).astype(np.int16)
    frames = np.split(bot, 100)  # 20 ms each
    marked = {24: "24", 49: "49", 74: "74", 99: "99"}

    async def scenario() -> SyntheticCaller:
        async with caller(harness) as c:
            await c.connect(await c.dial())
            started = await asyncio.to_thread(harness.call_started)
            tts = RingWriter(harness.pool.outbound[started.slot], started.epoch)
            for i, frame in enumerate(frames):
                while harness.pool.outbound[started.slot].stats().backlog > 48:
                    await asyncio.sleep(0.01)  # a TTS runs ahead of real time, not ahead of its ring
                flags = (FLAG_MARK if i in marked else 0) | (FLAG_END if i == len(frames) - 1 else 0)
                assert tts.write(frame.tobytes(), rate, flags=flags)
            names = await c.wait_for_marks(4, timeout=20)
            assert names == ["24", "49", "74", "99"]
            await c.hangup()
            return c

    c = asyncio.run(scenario())
    heard = c.heard_audio()
    resampler = StreamResampler(rate, 8000)
    want = mulaw_to_pcm16(pcm16_to_mulaw(np.concatenate([resampler.process(f) for f in frames])))
    assert np.array_equal(heard[:len(want)], want)
    # Each mark came back only after the audio queued before it had played.
    play_start = c.heard[0][0]
    for name, t in c.marks_echoed:
        audio_before = (int(name) + 1) * 0.02 - 0.03  # minus the resampler's one-frame lag
        assert t >= play_start + audio_before
    # Paced: Twilio was never more than the configured lead (200 ms) plus a frame ahead of playback.
    arrivals = [t for t, _ in c.received_media_times]
    first = arrivals[0]
    assert all(t - first >= i * 0.02 - 0.22 for i, t in enumerate(arrivals))
    # The call's recording holds what the caller heard, and its events.
    (call_dir,) = list(harness.recordings.iterdir())
    wait_recording_closed(call_dir)
    with wave.open(str(call_dir / "outbound.wav")) as w:
        recorded = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    assert np.array_equal(recorded[:len(heard)], heard)
    events = [json.loads(line) for line in (call_dir / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("mark") == 4
    assert events[-1]["outcome"] == "caller hung up (stop)" and events[-1]["seq_gaps"] == 0


def test_a_reply_held_until_the_turn_ended_plays_as_soon_as_it_is_committed(tmp_path: Path) -> None:
    """A reply started at the caller's pause is held; when the turn ends as transcribed, its audio goes at once,
    even when all of it is queued already (no ring write is left to wake the send loop)."""
    h = TransportHarness(tmp_path, ENGINE_CONVERSATION__GREETING="")
    text = "What time do you open?"

    async def scenario() -> float:
        async with caller(h) as c:
            await c.connect(await c.dial())
            started = await asyncio.to_thread(h.call_started)
            call, now = started.call_id, time.monotonic_ns()
            h.send(SpeechStarted(call_id=call, turn=1, onset_t_ns=now), sender="speech")
            h.send(Transcript(call_id=call, turn=1, text=text, final=False, speculative=True, speech_end_t_ns=now,
                              audio_ms=1500, stt_ms=100), sender="speech")
            respond = await asyncio.to_thread(h.wait_for, "llm", Respond, 10, lambda m: m.provisional)
            ring = h.pool.outbound[started.slot]
            tts = RingWriter(ring, started.epoch)
            tone = (np.sin(2 * np.pi * 330 * np.arange(320) / 16000) * 8000).astype(np.int16).tobytes()
            for i in range(10):  # the whole reply, 200 ms, made before the turn is over
                assert tts.write(tone, 16000, flags=gen_flags(respond.gen) | (FLAG_END if i == 9 else 0))
            while ring.stats().backlog:  # the send loop has taken it all, and waits for more
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            assert not c.received_media_times  # held
            committed_at = time.monotonic()
            h.send(EndOfTurn(call_id=call, turn=1, speech_end_t_ns=now), sender="speech")
            h.send(Transcript(call_id=call, turn=1, text=text, final=True, speech_end_t_ns=now, audio_ms=1500,
                              stt_ms=100), sender="speech")
            first = await c.first_media_after(committed_at, timeout=10)
            commit = await asyncio.to_thread(h.wait_for, "llm", Commit, 10)
            assert commit.gen == respond.gen
            await c.hangup()
            return first - committed_at

    try:
        waited = asyncio.run(scenario())
    finally:
        h.close()
    assert waited < IDLE_RECHECK_S / 2, f"the held audio waited {waited * 1000:.0f} ms for the send loop's recheck"


def wait_recording_closed(call_dir: Path, timeout: float = 10.0) -> None:
    """The recorder thread writes asynchronously: wait for the end event and a WAV header that covers the data."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = (call_dir / "events.jsonl").read_text() if (call_dir / "events.jsonl").exists() else ""
        wav = (call_dir / "outbound.wav").read_bytes()
        if '"end"' in events and len(wav) >= 44 and int.from_bytes(wav[40:44], "little") == len(wav) - 44:
            return
        time.sleep(0.05)
    raise AssertionError(f"recording in {call_dir} not closed within {timeout} s")


BAD_CLIENTS = {
    "binary frame": (None, lambda ws: ws.send_bytes(b"\x00\x01"), 1003),
    "malformed JSON": (None, lambda ws: ws.send_str("{nope"), 1007),
    "unknown event": (None, lambda ws: ws.send_str('{"event": "hello"}'), 1007),
    "media before start": (None, lambda ws: ws.send_str(json.dumps(
        {"event": "media", "streamSid": "MZx", "media": {"payload": "////"}})), 1008),
    "oversized message": (None, lambda ws: ws.send_str('{"event": "media", "x": "' + "a" * 70_000 + '"}'), 1009),
}


STREAM_SIGNATURE = {"X-Twilio-Signature": twilio_signature(AUTH_TOKEN, "wss://voice.example.test/twilio/stream", {})}


async def bad_client(h: TransportHarness, action) -> int | None:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(h.base_url + "/twilio/stream", headers=STREAM_SIGNATURE) as ws:
        await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await action(ws)
        async for _ in ws:
            pass
        return ws.close_code


def test_misbehaving_clients_are_closed_and_a_good_call_never_notices(harness: TransportHarness,
                                                                      speech: np.ndarray) -> None:
    got = bytearray()
    outcomes: dict[str, int | None] = {}

    async def misbehave() -> None:
        await asyncio.sleep(0.5)
        for name, (_, action, _) in BAD_CLIENTS.items():
            outcomes[name] = await bad_client(harness, action)
        # protocol-correct clients with the wrong credentials or format
        async with caller(harness) as c:
            await c.connect(await c.dial(), custom_parameters={"token": "forged"})
            await c.wait_closed(10)
            outcomes["forged token"] = c.close_code
        async with caller(harness) as c:
            await c.connect(await c.dial(), media_format={"encoding": "audio/l16", "sampleRate": 16000,
                                                          "channels": 1})
            await c.wait_closed(10)
            outcomes["wrong media format"] = c.close_code
        async with caller(harness) as c:
            target = await c.dial()
            await c.connect(target)
            await c.send_raw(json.dumps({"event": "media", "streamSid": "MZ-not-mine", "sequenceNumber": "2",
                                         "media": {"payload": "////"}}))
            await c.wait_closed(10)
            outcomes["wrong streamSid"] = c.close_code
        async with caller(harness) as c:  # a caller whose network vanishes mid-call
            await c.connect(await c.dial())
            await c.send_audio(speech[:8000], pace=True)
            await c.vanish()
            outcomes["vanished"] = 0

    async def scenario() -> None:
        async with caller(harness) as good:
            await good.connect(await good.dial())
            started = await asyncio.to_thread(harness.call_started)
            stop = asyncio.Event()
            drainer = asyncio.create_task(drain(RingReader(harness.pool.inbound[started.slot], started.epoch),
                                                got, stop))
            await asyncio.gather(good.send_audio(speech), misbehave())
            await asyncio.sleep(0.3)
            stop.set()
            await drainer
            assert not good.closed
            await good.hangup()

    asyncio.run(scenario())
    expected_codes = {name: code for name, (_, _, code) in BAD_CLIENTS.items()}
    expected_codes.update({"forged token": 1008, "wrong media format": 1007, "wrong streamSid": 1008, "vanished": 0})
    assert outcomes == expected_codes
    assert bytes(got) == expected_inbound(speech, 16000)  # not one sample of the good call lost or changed
    _, body = harness.get("/health")
    counters = json.loads(body)["transport"]["counters"]
    assert counters["streams_rejected"] == len(expected_codes) - 1
    assert counters["calls_ended"] == counters["calls_started"]  # the vanished call was cleaned up too
    assert json.loads(body)["calls_active"] == 0


def test_an_unsigned_stream_upgrade_is_refused(harness: TransportHarness) -> None:
    async def attempt(headers: dict[str, str]) -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(harness.base_url + "/twilio/stream", headers=headers):
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert asyncio.run(attempt({})) == 403
    assert asyncio.run(attempt({"X-Twilio-Signature": "forged"})) == 403
    assert asyncio.run(attempt(STREAM_SIGNATURE)) == 101


def test_a_stream_that_goes_silent_is_ended(tmp_path: Path) -> None:
    """A network that dies without closing the socket must not hold a line forever."""
    h = TransportHarness(tmp_path, ENGINE_TRANSPORT__STREAM_IDLE_TIMEOUT_S="1.0")
    try:
        async def scenario() -> SyntheticCaller:
            async with caller(h) as c:
                await c.connect(await c.dial())
                await c.wait_closed(15)  # we send nothing at all
                return c

        c = asyncio.run(scenario())
        assert c.close_code == 1001 and c.close_reason == "stream idle"
        assert h.wait_for("speech", CallEnded, 10.0).reason == "stream silent for 1 s"
        deadline = time.monotonic() + 5  # the lease is released just after CallEnded goes out
        while h.pool.leases() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert h.pool.leases() == []
    finally:
        h.close()
