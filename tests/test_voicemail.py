"""Calls we place, through the real transport: nothing is said until Twilio's signed answering-machine detection
result comes; a machine gets the voicemail message and a hang-up, a person the greeting. The test plays Twilio
(webhook, Media Stream, AMD callback) and the other processes (it speaks the TTS's part into the ring)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest

from ipc.ring import FLAG_END, FLAG_MARK, RingWriter, gen_flags
from ipc.schema import CallEnded, CallStarted, Respond, Sentence, Spoken
from tests.transport_harness import AUTH_TOKEN, PUBLIC_URL, TransportHarness
from tools.caller import SyntheticCaller, twilio_signature

GREETING = "Hello, this is the clinic calling."
VOICEMAIL = "This is the clinic. Please call us back about your appointment."
CALLEE = "+15557654321"
AMD_URL = PUBLIC_URL + "/twilio/amd"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TransportHarness]:
    h = TransportHarness(tmp_path_factory.mktemp("voicemail"), ENGINE_CONVERSATION__GREETING=GREETING,
                         ENGINE_CONVERSATION__VOICEMAIL_MESSAGE=VOICEMAIL,
                         ENGINE_TRANSPORT__STREAM_IDLE_TIMEOUT_S="60")
    yield h
    h.close()


def callee(h: TransportHarness) -> SyntheticCaller:
    """The person (or machine) our call rings: Twilio's webhook for it says `To` is the number we called."""
    return SyntheticCaller(h.base_url, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN, from_number="+15550001111",
                           to_number=CALLEE)


async def place(h: TransportHarness, c: SyntheticCaller, answered_first: str = "") -> CallStarted:
    """The callee picked up: Twilio fetches the voice webhook for our outbound call and opens its stream.
    `answered_first`: an AMD result Twilio posts before the stream has started."""
    target = await c.dial({"Direction": "outbound-api"})
    if answered_first:
        assert await amd(h, c.call_sid, answered_first) == 204
    await c.connect(target)
    started: CallStarted = await asyncio.to_thread(h.wait_for, "speech", CallStarted, 10.0,
                                                   lambda m: m.call_id == c.call_sid)
    return started


def post_amd(h: TransportHarness, params: dict[str, str], signature: str | None) -> int:
    request = urllib.request.Request(h.base_url + "/twilio/amd", data=urllib.parse.urlencode(params).encode(),
                                     headers={"X-Twilio-Signature": signature} if signature else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


async def amd(h: TransportHarness, call_sid: str, answered_by: str) -> int:
    """Twilio's async AMD status callback, signed as Twilio signs it."""
    params = {"AccountSid": "AC" + "0" * 32, "CallSid": call_sid, "AnsweredBy": answered_by,
              "MachineDetectionDuration": "4210"}
    return await asyncio.to_thread(post_amd, h, params, twilio_signature(AUTH_TOKEN, AMD_URL, params))


def replies_asked(h: TransportHarness, call_sid: str, seconds: float) -> list[Respond]:
    return [m for m in h.messages("llm", Respond, seconds) if m.call_id == call_sid]


def counters(h: TransportHarness) -> dict[str, int]:
    counted: dict[str, int] = json.loads(h.get("/health")[1])["transport"]["counters"]
    return counted


async def speak(h: TransportHarness, started: CallStarted, sentence: Sentence, seconds: float = 0.6) -> None:
    """The TTS's part: `sentence` as a tone in the call's ring, its last frame marked, and its `Spoken` span."""
    tts = RingWriter(h.pool.outbound[started.slot], started.epoch)
    frames = int(seconds / 0.02)
    first = tts.next_seq
    h.send(Spoken(call_id=sentence.call_id, gen=sentence.gen, index=0, seq_first=first,
                  seq_last=first + frames - 1, text=sentence.text, last=True), "tts")
    tone = (np.sin(np.arange(441) * 2 * np.pi * 330 / 22050) * 8000).astype(np.int16).tobytes()  # 20 ms
    for i in range(frames):
        last = FLAG_MARK | FLAG_END if i == frames - 1 else 0
        assert tts.write(tone, 22050, flags=gen_flags(sentence.gen) | last)


def test_a_machine_hears_nothing_until_its_beep_then_the_voicemail_message_and_a_hang_up(
        harness: TransportHarness) -> None:
    async def scenario() -> tuple[SyntheticCaller, list[Respond], list[Respond], int]:
        async with callee(harness) as c:
            started = await place(harness, c)
            # The machine's greeting plays: Twilio has not said who answered, so nothing is said or asked for.
            before = await asyncio.to_thread(replies_asked, harness, c.call_sid, 1.5)
            assert c.received_media_times == []
            code = await amd(harness, c.call_sid, "machine_end_beep")
            sentence: Sentence = await asyncio.to_thread(harness.wait_for, "tts", Sentence, 5.0,
                                                         lambda m: m.call_id == c.call_sid)
            assert (sentence.text, sentence.last) == (VOICEMAIL, True)  # verbatim, straight to the TTS
            await speak(harness, started, sentence)
            await c.wait_closed(10)  # the engine hung up once the message had played
            after = await asyncio.to_thread(replies_asked, harness, c.call_sid, 0.3)
            return c, before, after, code

    c, before, after, code = asyncio.run(scenario())
    assert before == [] and after == [] and code == 204  # the LLM was never asked for anything
    assert c.heard_seconds >= 0.5 and c.unplayed_at_close == 0  # the whole message was heard
    ended = harness.wait_for("speech", CallEnded, 10.0, lambda m: m.call_id == c.call_sid)
    assert ended.reason.startswith("engine hung up"), ended.reason
    assert counters(harness).get("amd_machine_end_beep", 0) >= 1


def test_a_person_is_greeted_once_twilio_says_so(harness: TransportHarness) -> None:
    async def scenario() -> tuple[list[Respond], Respond, list[Sentence]]:
        async with callee(harness) as c:
            await place(harness, c)
            before = await asyncio.to_thread(replies_asked, harness, c.call_sid, 1.5)
            assert await amd(harness, c.call_sid, "human") == 204
            greeting: Respond = await asyncio.to_thread(harness.wait_for, "llm", Respond, 5.0,
                                                        lambda m: m.call_id == c.call_sid)
            assert await amd(harness, c.call_sid, "machine_end_beep") == 204  # a second result changes nothing
            spoken = [m for m in await asyncio.to_thread(harness.messages, "tts", Sentence, 0.5)
                      if m.call_id == c.call_sid]
            await c.hangup()
            return before, greeting, spoken

    before, greeting, spoken = asyncio.run(scenario())
    assert before == []
    assert (greeting.say, greeting.caller_text) == (GREETING, "")
    assert spoken == []  # no voicemail message for a person


def test_a_result_that_comes_before_the_stream_is_kept_for_it(harness: TransportHarness) -> None:
    async def scenario() -> Sentence:
        async with callee(harness) as c:
            await place(harness, c, answered_first="machine_end_silence")
            sentence: Sentence = await asyncio.to_thread(harness.wait_for, "tts", Sentence, 5.0,
                                                         lambda m: m.call_id == c.call_sid)
            await c.hangup()
            return sentence

    assert asyncio.run(scenario()).text == VOICEMAIL


def test_an_inbound_call_is_not_screened(harness: TransportHarness) -> None:
    async def scenario() -> Respond:
        async with callee(harness) as c:
            await c.connect(await c.dial())
            greeting: Respond = await asyncio.to_thread(harness.wait_for, "llm", Respond, 5.0,
                                                        lambda m: m.call_id == c.call_sid)
            await c.hangup()
            return greeting

    assert asyncio.run(scenario()).say == GREETING


def test_amd_callbacks_must_be_signed_and_say_what_twilio_says(harness: TransportHarness) -> None:
    params = {"CallSid": "CA" + "7" * 32, "AnsweredBy": "machine_end_beep"}
    before = counters(harness)
    assert post_amd(harness, params, None) == 403
    wrong_url = twilio_signature(AUTH_TOKEN, PUBLIC_URL + "/twilio/status", params)
    assert post_amd(harness, params, wrong_url) == 403
    forged = twilio_signature(AUTH_TOKEN, AMD_URL, {**params, "AnsweredBy": "human"})
    assert post_amd(harness, params, forged) == 403
    odd = {**params, "AnsweredBy": "robot"}
    assert post_amd(harness, odd, twilio_signature(AUTH_TOKEN, AMD_URL, odd)) == 400
    no_sid = {"AnsweredBy": "human"}
    assert post_amd(harness, no_sid, twilio_signature(AUTH_TOKEN, AMD_URL, no_sid)) == 400
    after = counters(harness)
    assert after["webhook_refused"] - before.get("webhook_refused", 0) == 3
    assert after["amd_malformed"] - before.get("amd_malformed", 0) == 2
    assert after.get("amd_machine_end_beep", 0) == before.get("amd_machine_end_beep", 0)
