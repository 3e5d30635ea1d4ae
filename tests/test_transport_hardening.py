"""The real transport process against clients that attack it or cannot keep up (issue #15, items 1-5 and 8).

Each test sets the relevant limit small, so what a production limit does in seconds happens here in one or two.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from ipc.ring import RingWriter
from ipc.schema import CallEnded, CallStarted, EndOfTurn, Respond, SpeechStarted, SpeechSustained, Transcript
from procs.transport import LoopDied, supervise
from tests.transport_harness import AUTH_TOKEN, PUBLIC_URL, TransportHarness
from tools.caller import SyntheticCaller, TurnedAway, twilio_signature

STREAM_SIGNATURE = twilio_signature(AUTH_TOKEN, "wss://voice.example.test/twilio/stream", {})


def caller(h: TransportHarness) -> SyntheticCaller:
    return SyntheticCaller(h.base_url, public_url=PUBLIC_URL, auth_token=AUTH_TOKEN)


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the other end closes (or resets) the connection within `within` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_clients_that_trickle_are_cut_off_and_connections_are_capped(tmp_path: Path) -> None:
    h = TransportHarness(tmp_path, ENGINE_TRANSPORT__REQUEST_TIMEOUT_S="1.5", ENGINE_TRANSPORT__MAX_CONNECTIONS="6")
    socks: list[socket.socket] = []
    try:
        for _ in range(6):  # each sends a request line and one header, then trickles a byte now and then
            s = socket.create_connection(("127.0.0.1", h.port))
            s.sendall(b"POST /twilio/voice HTTP/1.1\r\nHost: voice.example.test\r\n")
            socks.append(s)
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", h.port))
        socks.append(extra)
        assert closed_by_peer(extra, 1.0), "a connection past transport.max_connections was kept"
        for _ in range(3):
            for s in socks[:6]:
                s.sendall(b"X")
            time.sleep(0.3)
        # The trickling clients are cut off at request_timeout_s from when they connected, bytes or not.
        assert all(closed_by_peer(s, 5.0) for s in socks[:6])
        # A body that never comes: the headers promise 100 bytes, 10 arrive.
        body = socket.create_connection(("127.0.0.1", h.port))
        socks.append(body)
        body.sendall(b"POST /twilio/voice HTTP/1.1\r\nHost: voice.example.test\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nCallSid=CA")
        body.settimeout(5.0)
        assert body.recv(100).startswith(b"HTTP/1.1 408")
        _, health = h.get("/health")
        counters = json.loads(health)["transport"]["counters"]
        assert counters["connections_shed"] >= 1 and counters["webhook_slow_body"] == 1
    finally:
        for s in socks:
            s.close()
        h.close()


async def ping_only(h: TransportHarness, opening: list[str], pings: int) -> tuple[int | None, str]:
    """A signed stream that sends `opening`, then only pings (every 0.25 s); the engine's close code and reason."""
    async with aiohttp.ClientSession() as session, session.ws_connect(
            h.base_url + "/twilio/stream", headers={"X-Twilio-Signature": STREAM_SIGNATURE}, autoping=True) as ws:
        for text in opening:
            await ws.send_str(text)
        for _ in range(pings):
            await ws.ping()
            try:
                msg = await ws.receive(timeout=0.25)
            except TimeoutError:
                continue
            if msg.type == aiohttp.WSMsgType.CLOSE:
                return int(msg.data), str(msg.extra)
            if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return ws.close_code, "closed without a close frame"
        return None, "still open"


def test_a_stream_that_never_starts_is_closed_and_pings_do_not_keep_it(tmp_path: Path) -> None:
    h = TransportHarness(tmp_path, ENGINE_TRANSPORT__START_TIMEOUT_S="1.0",
                         ENGINE_TRANSPORT__STREAM_IDLE_TIMEOUT_S="1.5", ENGINE_TRANSPORT__MAX_UNSTARTED_STREAMS="2")
    try:
        connected = json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        code, reason = asyncio.run(ping_only(h, [connected], 40))  # 10 s of pings, never a start
        assert (code, reason) == (1008, "no start")

        async def streamed_then_pinged() -> tuple[int | None, str]:
            c = caller(h)
            target = await c.dial()
            await c.close()
            start = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
                     "start": {"streamSid": "MZ1", "callSid": c.call_sid, "accountSid": c.account_sid,
                               "customParameters": target.parameters,
                               "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
            return await ping_only(h, [connected, json.dumps(start)], 40)

        # After `start`, media is due every 20 ms: pings alone do not keep the call either.
        assert asyncio.run(streamed_then_pinged()) == (1001, "stream idle")

        async def crowd() -> list[int]:
            async with aiohttp.ClientSession() as session:
                held = [await session.ws_connect(h.base_url + "/twilio/stream",
                                                 headers={"X-Twilio-Signature": STREAM_SIGNATURE})
                        for _ in range(2)]
                with pytest.raises(aiohttp.WSServerHandshakeError) as shed:
                    await session.ws_connect(h.base_url + "/twilio/stream",
                                             headers={"X-Twilio-Signature": STREAM_SIGNATURE})
                for ws in held:
                    await ws.close()
                return [shed.value.status]

        assert asyncio.run(crowd()) == [503]
        counters = json.loads(h.get("/health")[1])["transport"]["counters"]
        assert counters["streams_shed_no_start"] == 1 and counters["streams_shed_unstarted"] == 1
    finally:
        h.close()


def test_a_stream_token_opens_one_stream_and_an_answered_call_holds_its_line(tmp_path: Path) -> None:
    h = TransportHarness(tmp_path, ENGINE_ENGINE__MAX_CALLS="1", ENGINE_TWILIO__ACCOUNT_SID="AC" + "7" * 32)

    async def scenario() -> dict[str, object]:
        seen: dict[str, object] = {}
        first = caller(h)
        first.account_sid = "AC" + "7" * 32
        target = await first.dial()
        # The line is held for the answered call until its stream starts: a second caller hears busy.
        second = caller(h)
        with pytest.raises(TurnedAway):
            await second.dial()
        seen["second caller"] = "busy"
        await second.close()
        await first.connect(target)
        await asyncio.to_thread(h.call_started)
        await first.hangup()
        await first.close()
        await asyncio.to_thread(h.wait_for, "speech", CallEnded, 10.0)
        # The same token again, once the call has ended: refused, as it would be during the call.
        replay = caller(h)
        replay.call_sid, replay.account_sid = first.call_sid, first.account_sid
        await replay.connect(target)
        await replay.wait_closed(10)
        seen["replay"] = (replay.close_code, replay.close_reason)
        await replay.close()
        # A fresh token, but a start from another Twilio account.
        other = caller(h)
        other.account_sid = "AC" + "8" * 32
        await other.connect(await other.dial())
        await other.wait_closed(10)
        seen["other account"] = (other.close_code, other.close_reason)
        await other.close()
        return seen

    try:
        assert asyncio.run(scenario()) == {"second caller": "busy",
                                           "replay": (1008, "stream token already used"),
                                           "other account": (1008, "stream from another Twilio account")}
    finally:
        h.close()


def test_health_is_for_operators(tmp_path: Path) -> None:
    outside = [a for a in os.popen("hostname -I").read().split() if "." in a and not a.startswith("127.")]
    if not outside:
        pytest.skip("no non-loopback IPv4 address to reach the transport from")
    h = TransportHarness(tmp_path, ENGINE_TRANSPORT__HOST="0.0.0.0", ENGINE_TRANSPORT__HEALTH_TOKEN="ops-token")
    try:
        import urllib.error
        import urllib.request

        def answered(host: str, headers: dict[str, str]) -> bool:
            """Whether /health gave its document (503 here: no supervisor has reported), or only a 404."""
            request = urllib.request.Request(f"http://{host}:{h.port}/health", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    body = r.read()
            except urllib.error.HTTPError as e:
                body = e.read()
                if e.code == 404:
                    return False
            return "transport" in json.loads(body)

        assert answered("127.0.0.1", {})
        assert not answered(outside[0], {})
        assert not answered(outside[0], {"Authorization": "Bearer wrong"})
        assert answered(outside[0], {"Authorization": "Bearer ops-token"})
    finally:
        h.close()


def ws_frame(text: str) -> bytes:
    """One masked WebSocket text frame, as a client must send it."""
    data, mask = text.encode(), os.urandom(4)
    n = len(data)
    header = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def deaf_stream(h: TransportHarness, call_sid: str, account_sid: str, parameters: dict[str, str]) -> socket.socket:
    """A Media Stream whose client, once started, never reads again: its network stopped taking data."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.connect(("127.0.0.1", h.port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /twilio/stream HTTP/1.1\r\nHost: 127.0.0.1:{h.port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"X-Twilio-Signature: {STREAM_SIGNATURE}\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += s.recv(1)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    s.sendall(ws_frame(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})))
    s.sendall(ws_frame(json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": "MZdeaf",
        "start": {"streamSid": "MZdeaf", "callSid": call_sid, "accountSid": account_sid,
                  "customParameters": parameters,
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})))
    return s


def test_a_caller_who_stops_reading_costs_only_their_own_call(tmp_path: Path) -> None:
    """Caller A's network stops reading; A barges in; caller B still gets its reply, and A's call is ended."""
    h = TransportHarness(tmp_path, ENGINE_TRANSPORT__SEND_BUFFER_BYTES="4096", ENGINE_TRANSPORT__SEND_TIMEOUT_S="2",
                         ENGINE_TRANSPORT__STREAM_IDLE_TIMEOUT_S="60", ENGINE_CONVERSATION__REPLY_TIMEOUT_S="60")
    tone = (np.sin(np.arange(441) * 2 * np.pi * 330 / 22050) * 8000).astype(np.int16).tobytes()  # 20 ms

    async def scenario() -> tuple[Respond, CallEnded, bool]:
        b = caller(h)  # a caller that reads everything (the greeting is asked for and never comes: no llm here)
        await b.connect(await b.dial())
        started_b: CallStarted = await asyncio.to_thread(h.call_started)
        a = caller(h)
        target = await a.dial()
        await a.close()
        deaf = deaf_stream(h, a.call_sid, a.account_sid, target.parameters)
        started_a: CallStarted = await asyncio.to_thread(h.call_started)
        assert (started_a.call_id, started_b.call_id) == (a.call_sid, b.call_sid)
        ring = h.pool.outbound[started_a.slot]
        tts = RingWriter(ring, started_a.epoch)
        # Bot audio for A until its sends stop going out: the ring's reader stalls with frames in it.
        read_before, still_since = -1, time.monotonic()
        while time.monotonic() - still_since < 0.6:
            while ring.stats().backlog < 48:
                assert tts.write(tone, 22050)
            await asyncio.sleep(0.05)
            if ring.stats().read != read_before:
                read_before, still_since = ring.stats().read, time.monotonic()
        for call in (a, b):  # each talks over its greeting: a barge-in, so each call sends `clear`
            h.send(SpeechStarted(call_id=call.call_sid, turn=1, onset_t_ns=time.monotonic_ns()), "speech")
            h.send(SpeechSustained(call_id=call.call_sid, turn=1), "speech")
        h.send(EndOfTurn(call_id=b.call_sid, turn=1, speech_end_t_ns=time.monotonic_ns()), "speech")
        h.send(Transcript(call_id=b.call_sid, turn=1, text="What time do you open?", final=True,
                          speech_end_t_ns=time.monotonic_ns(), audio_ms=1500, stt_ms=100), "speech")
        reply = await asyncio.to_thread(h.wait_for, "llm", Respond, 3.0,
                                        lambda m: m.call_id == b.call_sid and m.caller_text != "")
        ended = await asyncio.to_thread(h.wait_for, "speech", CallEnded, 10.0, lambda m: m.call_id == a.call_sid)
        b_still_up = not b.closed
        deaf.close()
        await b.hangup()
        await b.close()
        return reply, ended, b_still_up

    try:
        reply, ended, b_still_up = asyncio.run(scenario())
        assert reply.caller_text == "What time do you open?"
        assert ended.reason.startswith("caller not reading"), ended.reason
        assert b_still_up
        counters = json.loads(h.get("/health")[1])["transport"]["counters"]
        assert counters["streams_aborted"] == 1 and counters.get("conversation_failures", 0) == 0
    finally:
        h.close()


def test_a_shared_loop_that_dies_takes_the_transport_down_loudly() -> None:
    """The bus, tick and heartbeat loops serve every call: one that ends would leave the transport deaf while
    its other loops kept the supervisor content. `supervise` turns that into an exit the supervisor restarts."""
    cancelled: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append("forever")
            raise

    async def dies() -> None:
        await asyncio.sleep(0.01)
        raise KeyError("a bug")

    async def run(loops: list) -> None:  # type: ignore[type-arg]
        stopping = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, stopping.set)
        await supervise(stopping, loops)

    with pytest.raises(LoopDied, match="dies KeyError"):
        asyncio.run(run([forever, dies]))
    assert cancelled == ["forever"]
    asyncio.run(run([forever]))  # stopping, not a death: returns quietly
    assert cancelled == ["forever", "forever"]
