"""The synthetic Twilio caller against a tiny scripted engine: webhook signing, the Media Streams
messages it sends, and Twilio's playback behaviour (marks, clear) it imitates.

Timing checks compare the caller's own timestamps with each other (a mark is echoed no earlier than
its audio could have finished), never against wall-clock bounds, so a loaded machine only slows them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import struct
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import Connect, VoiceResponse

from engine.codec import mulaw_to_pcm16, pcm16_to_mulaw
from tools.caller import CallerError, Playback, SyntheticCaller, load_wav, speech_from_text, twilio_signature

AUTH_TOKEN = "caller-test-auth-token-0123456789"
PUBLIC_URL = "https://voice.example.test"
STREAM_URL = "wss://voice.example.test/twilio/stream"
WAIT = 10.0  # generous: only ever a bound on waiting, never an assertion about speed


class FakeEngine:
    """A minimal engine: a signed voice webhook answering `<Connect><Stream>`, and a Media Streams
    socket that records what arrives and sends whatever the test tells it to."""

    def __init__(self) -> None:
        self.webhooks: list[dict[str, str]] = []
        self.handshake_signed = False
        self.received: list[Any] = []  # JSON messages as dicts; anything else raw
        self.close_code: int | None = None
        self.ws: web.WebSocketResponse | None = None
        self.ended = asyncio.Event()

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/twilio/voice", self.voice)
        app.router.add_get("/twilio/stream", self.stream)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def voice(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        if not RequestValidator(AUTH_TOKEN).validate(PUBLIC_URL + "/twilio/voice", form,
                                                     request.headers.get("X-Twilio-Signature", "")):
            return web.Response(status=403, text="invalid signature")
        self.webhooks.append(form)
        response, connect = VoiceResponse(), Connect()
        connect.stream(url=STREAM_URL).parameter(name="token", value="tok-" + form["CallSid"])
        response.append(connect)
        return web.Response(text=str(response), content_type="text/xml")

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        self.handshake_signed = RequestValidator(AUTH_TOKEN).validate(
            STREAM_URL, {}, request.headers.get("X-Twilio-Signature", ""))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws = ws
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        self.received.append(json.loads(msg.data))
                    except ValueError:
                        self.received.append(msg.data)
                else:
                    self.received.append(msg.data)
        finally:
            self.close_code = ws.close_code
            self.ended.set()
        return ws

    def messages(self, event: str) -> list[dict[str, Any]]:
        return [m for m in self.received if isinstance(m, dict) and m.get("event") == event]

    async def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        for _ in range(int(WAIT / 0.01)):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the engine never saw {what}; it got {self.received!r:.500}")

    async def send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(message))

    async def play(self, stream_sid: str, pcm: np.ndarray) -> None:
        """Send audio as 20 ms media messages, all at once (the caller paces playback, not us)."""
        data = pcm16_to_mulaw(pcm)
        for i in range(0, len(data), 160):
            await self.send({"event": "media", "streamSid": stream_sid,
                             "media": {"payload": base64.b64encode(data[i:i + 160]).decode()}})

    async def mark(self, stream_sid: str, name: str) -> None:
        await self.send({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def mulaw_exact(seconds: float, freq: float = 440.0) -> np.ndarray:
    """A tone that survives μ-law unchanged, so bit-exact comparisons are fair."""
    t = np.arange(round(seconds * 8000)) / 8000
    return mulaw_to_pcm16(pcm16_to_mulaw((np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16)))


def run(scenario: Callable[[FakeEngine, SyntheticCaller], Awaitable[None]], auth_token: str = AUTH_TOKEN) -> None:
    async def main() -> None:
        engine = FakeEngine()
        base_url = await engine.start()
        try:
            async with SyntheticCaller(base_url, public_url=PUBLIC_URL, auth_token=auth_token) as caller:
                await asyncio.wait_for(scenario(engine, caller), 60)
        finally:
            await engine.stop()

    asyncio.run(main())


async def connected(engine: FakeEngine, caller: SyntheticCaller) -> None:
    await caller.connect(await caller.dial())
    await engine.wait_for(lambda: len(engine.received) >= 2, "connected and start")


def test_signature_matches_twilios_reference_implementation() -> None:
    params = {"CallSid": "CA1", "From": "+15550001111", "To": "+15550002222", "Digits": "1 2&3"}
    url = PUBLIC_URL + "/twilio/voice"
    assert twilio_signature(AUTH_TOKEN, url, params) == RequestValidator(AUTH_TOKEN).compute_signature(url, params)


def test_dial_signs_the_webhook_and_follows_the_twiml() -> None:
    async def scenario(engine: FakeEngine, caller: SyntheticCaller) -> None:
        target = await caller.dial()
        hook = engine.webhooks[0]
        assert (hook["CallSid"], hook["AccountSid"]) == (caller.call_sid, caller.account_sid)
        assert (hook["From"], hook["To"], hook["Direction"]) == ("+15550001111", "+15550002222", "inbound")
        assert target.url == STREAM_URL
        assert target.parameters == {"token": "tok-" + caller.call_sid}

        await caller.connect(target)
        await engine.wait_for(lambda: len(engine.received) >= 2, "connected and start")
        assert engine.handshake_signed
        first, start = engine.received[:2]
        assert first == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        assert start["event"] == "start" and start["sequenceNumber"] == "1"
        assert start["streamSid"] == caller.stream_sid and caller.stream_sid.startswith("MZ")
        info = start["start"]
        assert (info["streamSid"], info["callSid"], info["accountSid"]) == (
            caller.stream_sid, caller.call_sid, caller.account_sid)
        assert info["tracks"] == ["inbound"]
        assert info["customParameters"] == {"token": "tok-" + caller.call_sid}
        assert info["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}

    run(scenario)


def test_wrong_auth_token_is_refused_with_a_clear_error() -> None:
    async def scenario(engine: FakeEngine, caller: SyntheticCaller) -> None:
        with pytest.raises(CallerError, match=r"HTTP 403.*invalid signature"):
            await caller.dial()
        assert engine.webhooks == []

    run(scenario, auth_token="not-the-engines-token")


def test_custom_parameters_can_be_overridden_without_dialling() -> None:
    async def scenario(engine: FakeEngine, caller: SyntheticCaller) -> None:
        await caller.connect(custom_parameters={"token": "forged"})
        await engine.wait_for(lambda: len(engine.received) >= 2, "start")
        assert engine.received[1]["start"]["customParameters"] == {"token": "forged"}

    run(scenario)


def test_paced_audio_arrives_bit_exact_in_20ms_frames() -> None:
    signal = mulaw_exact(0.5 + 70 / 8000)  # 26 frames, the last one padded

    async def scenario(engine: FakeEngine, caller: SyntheticCaller) -> None:
        await connected(engine, caller)
        await caller.send_audio(signal)
        await engine.wait_for(lambda: len(engine.messages("media")) == 26, "26 media messages")
        media = engine.messages("media")
        payloads = [base64.b64decode(m["media"]["payload"]) for m in media]
        assert all(len(p) == 160 for p in payloads)
        decoded = mulaw_to_pcm16(b"".join(payloads))
        assert np.array_equal(decoded, np.concatenate([signal, np.zeros(90, np.int16)]))
        assert [m["sequenceNumber"] for m in engine.received[1:]] == [str(i) for i in range(1, 28)]
        assert [m["media"]["chunk"] for m in media] == [str(i) for i in range(1, 27)]
        assert np.all(np.diff([int(m["media"]["timestamp"]) for m in media]) == 20)
        assert {(m["media"]["track"], m["streamSid"]) for m in media} == {("inbound", caller.stream_sid)}
        # An absolute 20 ms schedule, and no frame leaves before its time.
        due = np.array([f.due for f in caller.sent_media])
        assert np.allclose(np.diff(due), 0.02, atol=1e-9)
        assert all(f.t >= f.due for f in caller.sent_media)

    run(scenario)


def test_unpaced_audio_keeps_consecutive_timestamps_across_calls() -> None:
    async def scenario(engine: FakeEngine, caller: SyntheticCaller) -> None:
        await connected(engine, caller)
        await caller.send_audio(mulaw_exact(0.2), pace=False)
        await caller.send_silence(0.2, pace=False)
        await engine.wait_for(lambda: len(engine.messages("media")) == 20, "20 media messages")
        stamps = [int(m["media"]["timestamp"]) for m in engine.messages("media")]
        assert np.all(np.diff(stamps) == 20)

    run(scenario)


def test_mark_is_echoed_only_after_the_audio_before_it_has_played() -> None:
    signal = mulaw_exact(0.3)

    async def scenario(engine: FakeEngine, caller: SyntheticCaller) -> None:
        await connected(engine, caller)
        await engine.play(caller.stream_sid, signal)
        await engine.mark(caller.stream_sid, "after-audio")
        assert await caller.wait_for_marks(1, WAIT) == ["after-audio"]
        echoed_at = caller.marks_echoed[0][1]
        assert echoed_at >= caller.heard[0][0] + 0.3 - 1e-9
        assert np.array_equal(caller.heard_audio(), signal)
        await engine.wait_for(lambda: engine.messages("mark"), "the mark echo")
        echo = engine.messages("mark")[0]
        assert echo["mark"] == {"name": "after-audio"} and echo["streamSid"] == caller.stream_sid
        assert int(echo["sequenceNumber"]) == 2  # start was 1; the caller sent nothing else

        # Nothing queued: the echo goes out before the caller even looks at the next message.
        await engine.mark(caller.stream_sid, "empty")
        await engine.play(caller.stream_sid, signal[:160])
        await caller.wait_for_marks(2, WAIT)
        await caller.wait_until(lambda: len(caller.received_media_times) == 16, WAIT, "the last media")
        log = [(d, m.get("event"), m.get("mark", {}).get("name")) for _, d, m in caller.events]
        mark_in = log.index(("in", "mark", "empty"))
        assert log[mark_in + 1] == ("out", "mark", "empty")
        assert log[mark_in + 2][:2] == ("in", "media")

    run(scenario)


def test_bot_audio_that_runs_dry_mid_utterance_is_a_stall_placed_in_the_utterance() -> None:
    signal = mulaw_exact(0.2)

    async def scenario(engine: FakeEngine, caller: SyntheticCaller) -> None:
        await connected(engine, caller)
        await engine.play(caller.stream_sid, signal)  # 0.2 s of a reply, then nothing for 0.35 s
        await asyncio.sleep(0.35)
        await engine.play(caller.stream_sid, signal)
        await caller.wait_until(lambda: len(caller.received_media_times) == 20, WAIT, "the rest")
        assert caller.underruns == 1 and len(caller.underrun_at) == 1
        at, gap = caller.underrun_at[0]
        assert at == pytest.approx(0.2, abs=0.03)  # where the first part ran out, on the utterance's clock
        assert gap == pytest.approx(0.15, abs=0.08) and caller.underrun_s == gap

    run(scenario)


def test_clear_drops_unplayed_audio_and_echoes_pending_marks_at_once() -> None:
    signal = mulaw_exact(4.0)

    async def scenario(engine: FakeEngine, caller: SyntheticCaller) -> None:
        await connected(engine, caller)
        await engine.play(caller.stream_sid, signal)
        await engine.mark(caller.stream_sid, "m1")
        await engine.play(caller.stream_sid, signal[:1600])
        await engine.mark(caller.stream_sid, "m2")
        await caller.wait_heard(0.2, WAIT)
        await engine.send({"event": "clear", "streamSid": caller.stream_sid})
        assert await caller.wait_for_marks(2, WAIT) == ["m1", "m2"]
        assert len(caller.clears) == 1
        assert all(t >= caller.clears[0] for _, t in caller.marks_echoed)
        assert caller.heard_seconds < 4.0 and caller.playback.idle
        heard = caller.heard_audio()
        assert np.array_equal(heard, signal[:len(heard)])  # what played before the clear, in order
        await engine.mark(caller.stream_sid, "m3")  # the queue is empty again: answered at once
        assert (await caller.wait_for_marks(3, WAIT))[2] == "m3"
        assert caller.heard_seconds < 4.0

    run(scenario)


def test_hangup_sends_stop_then_closes_cleanly() -> None:
    async def scenario(engine: FakeEngine, caller: SyntheticCaller) -> None:
        await connected(engine, caller)
        await caller.send_silence(0.06)
        await caller.hangup()
        await asyncio.wait_for(engine.ended.wait(), WAIT)
        stop = engine.received[-1]
        assert stop == {"event": "stop", "sequenceNumber": "5", "streamSid": caller.stream_sid,
                        "stop": {"accountSid": caller.account_sid, "callSid": caller.call_sid}}
        assert engine.close_code == aiohttp.WSCloseCode.OK
        assert caller.closed
        with pytest.raises(CallerError, match="closed"):
            await caller.send_silence(0.02)

    run(scenario)


def test_vanish_drops_the_connection_without_stop() -> None:
    async def scenario(engine: FakeEngine, caller: SyntheticCaller) -> None:
        await connected(engine, caller)
        await caller.send_silence(0.06)
        await caller.vanish()
        await asyncio.wait_for(engine.ended.wait(), WAIT)
        assert engine.messages("stop") == []
        assert engine.close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE
        assert caller.closed and caller.close_code is None

    run(scenario)


def test_engine_close_is_recorded_and_unplayed_audio_is_never_heard() -> None:
    async def scenario(engine: FakeEngine, caller: SyntheticCaller) -> None:
        await connected(engine, caller)
        await engine.play(caller.stream_sid, mulaw_exact(2.0))
        assert engine.ws is not None
        await engine.ws.close(code=4000, message=b"bye")
        await caller.wait_closed(WAIT)
        assert (caller.close_code, caller.close_reason) == (4000, "bye")
        assert caller.unplayed_at_close > 0
        assert caller.heard_seconds + caller.unplayed_at_close / 8000 == pytest.approx(2.0)

    run(scenario)


def test_dtmf_and_raw_messages() -> None:
    async def scenario(engine: FakeEngine, caller: SyntheticCaller) -> None:
        await connected(engine, caller)
        await caller.send_dtmf("5")
        with pytest.raises(ValueError):
            await caller.send_dtmf("x")
        await caller.send_raw("{not json")
        await caller.send_raw(b"\x00\x01")
        await engine.wait_for(lambda: len(engine.received) == 5, "dtmf and two raw messages")
        assert engine.received[2] == {"event": "dtmf", "streamSid": caller.stream_sid, "sequenceNumber": "2",
                                      "dtmf": {"track": "inbound_track", "digit": "5"}}
        assert engine.received[3:] == ["{not json", b"\x00\x01"]

    run(scenario)


def test_messages_twilio_would_not_accept_are_recorded_not_played() -> None:
    async def scenario(engine: FakeEngine, caller: SyntheticCaller) -> None:
        await connected(engine, caller)
        assert engine.ws is not None
        await engine.ws.send_bytes(b"\xff" * 160)
        await engine.send({"event": "media", "streamSid": "MZwrong", "media": {"payload": "//8="}})
        await engine.send({"event": "media", "streamSid": caller.stream_sid, "media": {"payload": "%%%"}})
        await engine.send({"event": "dance", "streamSid": caller.stream_sid})
        await caller.wait_until(lambda: len(caller.unexpected) == 4, WAIT, "four unexpected messages")
        assert caller.received_media_times == [] and caller.heard == []

    run(scenario)


def test_continuous_line_fills_silence_around_speech() -> None:
    speech = mulaw_exact(0.1, freq=1000.0)

    async def scenario(engine: FakeEngine, caller: SyntheticCaller) -> None:
        await caller.connect(await caller.dial(), continuous=True)
        await engine.wait_for(lambda: len(engine.messages("media")) >= 5, "line silence")
        await caller.send_audio(speech)
        await engine.wait_for(lambda: len(engine.messages("media")) >= 20, "silence after speech")
        media = engine.messages("media")
        stamps = np.array([int(m["media"]["timestamp"]) for m in media])
        assert np.all(np.diff(stamps) == 20) and stamps[0] == 0  # no slot skipped, none doubled
        assert [m["media"]["chunk"] for m in media] == [str(i) for i in range(1, len(media) + 1)]
        frames = [mulaw_to_pcm16(base64.b64decode(m["media"]["payload"])) for m in media]
        spoken = [i for i, f in enumerate(frames) if f.any()]
        assert len(spoken) == 5 and np.all(np.diff(stamps[spoken]) == 20)
        assert np.array_equal(np.concatenate([frames[i] for i in spoken]), speech)

    run(scenario)


def test_playback_model() -> None:
    playback = Playback()
    assert playback.add_mark("idle", now=0.0) == ["idle"]
    playback.add_audio(np.ones(300, np.int16))
    assert playback.add_mark("end", now=0.0) == []
    marks, played = playback.tick(1.0)
    assert (marks, len(played)) == ([], 160)
    marks, played = playback.tick(1.02)
    assert (marks, len(played), playback.playing_until) == ([], 140, pytest.approx(1.02 + 140 / 8000))
    assert playback.add_mark("late", now=1.03) == []  # the last 140 samples are still playing
    marks, played = playback.tick(1.04)
    assert (marks, len(played)) == (["end", "late"], 0)
    playback.add_audio(np.ones(800, np.int16))
    playback.add_mark("a", now=2.0)
    playback.add_audio(np.ones(800, np.int16))
    playback.add_mark("b", now=2.0)
    assert playback.clear() == ["a", "b"] and playback.idle


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_speech_from_text_is_plausible_speech() -> None:
    pcm = speech_from_text("hello world")
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    assert 0.5 <= len(pcm) / 8000 <= 3.0
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 300


def _wav_header(rate: int, channels: int, data_len: int, *, extensible: bool) -> bytes:
    block = 2 * channels
    if extensible:  # WAVE_FORMAT_EXTENSIBLE with a PCM subformat: Python 3.11's `wave` refuses it
        fmt = struct.pack("<HHIIHHHHI16s", 0xFFFE, channels, rate, rate * block, block, 16, 22, 16, 0,
                          b"\x01\x00\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71")
    else:
        fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, 16)
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", data_len))


@pytest.mark.parametrize("extensible", [False, True])
def test_load_wav_with_placeholder_sizes(tmp_path: Path, extensible: bool) -> None:
    pcm = (np.sin(np.arange(8000) / 8000 * 2 * np.pi * 300) * 5000).astype("<i2")
    path = tmp_path / "streamed.wav"
    path.write_bytes(_wav_header(8000, 1, 0xFFFFFFFF, extensible=extensible) + pcm.tobytes())
    assert np.array_equal(load_wav(path), pcm)


def test_load_wav_downmixes_and_resamples(tmp_path: Path) -> None:
    n = 16000
    tone = (np.sin(np.arange(n) / 16000 * 2 * np.pi * 440) * 8000).astype(np.int16)
    stereo = np.stack([tone, np.zeros(n, np.int16)], axis=1)
    path = tmp_path / "stereo16k.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(stereo.tobytes())
    out = load_wav(path)
    assert abs(len(out) - 8000) <= 2
    assert np.sqrt(np.mean(out[400:-400].astype(np.float64) ** 2)) == pytest.approx(4000 / np.sqrt(2), rel=0.05)
