"""Hostile input against the live engine while good callers talk to it (hypothesis drives the hostile side).

One engine (the real CPU models, greeting off so hostile calls cost no speech) serves two good callers
that keep asking questions on continuous lines for the whole module. Meanwhile hypothesis sends:

- Media Streams sessions: a signed upgrade, then nothing, `connected`, or a valid `start` (token from a
  signed webhook), then a run of malformed, oversized, out-of-order and hostile messages (wrong
  events, streamSids, sequence numbers, payloads, digits, marks; raw text, raw JSON, binary frames,
  frames past the size limit, numbers past int()'s 4,300 digits, nesting past the decoder's depth, a
  non-ASCII token, a spent token on a second socket). The engine may close the socket with a protocol
  code, never with an engine error, and never by dropping the connection;
- webhook and other HTTP requests: random forms, signatures, bodies (past the size limit too),
  methods and paths. The engine may refuse them, never answer 5xx.

Then: every process is still its first incarnation (nothing crashed), no call is left, every good call
answered every question with none of its inbound frames lost, and the transport's file descriptors,
the shared memory and the process count are where they were.

Each run draws new examples: the seed is printed, and FUZZ_SEED=<seed> replays a run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tools.caller import StreamTarget, SyntheticCaller, twilio_signature
from tools.engine_run import EngineRun, serve
from tools.soak_calls import QUESTIONS, frame_accounting, frames_expected
from tools.soak_watch import settled_snapshot

AUTH = "fuzz-auth-token"
PUBLIC = "https://voice.fuzz.test"
MAX_MESSAGE = 65536
# What a hostile stream may be closed with: normal, going away, unsupported data, invalid payload, policy,
# too big, try again later. Not 1011 (an engine error) and not 1006 (the connection simply dropped).
PROTOCOL_CLOSES = {1000, 1001, 1003, 1007, 1008, 1009, 1013}
SESSIONS = 400
REQUESTS = 150
STREAM_SID = "MZfuzz" + "0" * 28
SENT = [0]  # hostile messages that went out (the engine may close a session before all of its are sent)
SEED = int(os.environ.get("FUZZ_SEED") or random.randrange(2**32))  # a new sample each run; printed to replay it


class Loop:
    """An asyncio loop in a thread: good callers run on it throughout, hypothesis examples submit to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class GoodCaller:
    """Asks question after question on a continuous line until told to stop; remembers what went wrong."""

    def __init__(self, port: int, voices: dict[str, Any], n: int) -> None:
        self.c = SyntheticCaller(f"http://127.0.0.1:{port}", public_url=PUBLIC, auth_token=AUTH, keep_payloads=False)
        self.voices, self.n = voices, n
        self.stop = asyncio.Event()
        self.answers = 0
        self.problems: list[str] = []

    async def run(self) -> None:
        c = self.c
        try:
            await c.connect(await c.dial(), continuous=True)
            k = self.n
            while not self.stop.is_set():
                pcm = self.voices[QUESTIONS[k % len(QUESTIONS)]]
                k += 2
                sent_before = len(c.sent_media)
                await c.send_audio(pcm)
                _, end = c.speech_bounds(sent_before, pcm)
                await c.first_media_after(end, 60)
                await c.wait_quiet(1.5, 90)
                self.answers += 1
            await c.hangup()
        except Exception as exc:  # recorded, and the test fails on it
            self.problems.append(f"{type(exc).__name__}: {exc}; close {c.close_code} {c.close_reason!r}")
        finally:
            await c.close()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineRun]:
    run = EngineRun(tmp_path_factory.mktemp("fuzz"), ENGINE_TRANSPORT__PUBLIC_URL=PUBLIC,
                    ENGINE_TWILIO__AUTH_TOKEN=AUTH, ENGINE_TRANSPORT__RECORDINGS_DIR="",
                    ENGINE_ENGINE__MAX_CALLS="8", ENGINE_CONVERSATION__GREETING="",
                    # The fuzzer's own load on a small box must not turn a good call away busy: that is admission
                    # at work (tests/test_admission.py), not harm from hostile input.
                    ENGINE_ENGINE__ADMIT_MAX_RESPONSE_MS="0",
                    ENGINE_CONVERSATION__IDLE_REPROMPT_S="600", ENGINE_LLM__MAX_TOKENS="40")
    yield from serve(run)


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


# --- what hypothesis sends ------------------------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4),
                           max_leaves=12)
odd = st.one_of(st.text(max_size=24), st.integers(), st.none(), json_values)
numbers = st.one_of(st.integers(-3, 10**22).map(str), st.text(max_size=6), st.integers(), st.none(),
                    st.integers(4300, 6000).map(lambda n: "9" * n))  # past int()'s digit limit: ValueError
payloads = st.one_of(st.binary(max_size=480).map(lambda b: base64.b64encode(b).decode()), st.text(max_size=40),
                     st.just(""), st.just("*" * 20_000), st.just(base64.b64encode(b"\xff" * 9000).decode()), odd)
EVENTS = ["connected", "start", "media", "dtmf", "mark", "stop", "clear", "MEDIA", ""]


@st.composite
def twilio_message(draw: st.DrawFn, stream_sid: str) -> str:
    event = draw(st.sampled_from(EVENTS) | st.text(max_size=10) | odd)
    msg: dict[str, Any] = {"event": event}
    if draw(st.booleans()):
        msg["sequenceNumber"] = draw(numbers)
    if draw(st.booleans()):
        msg["streamSid"] = draw(st.sampled_from([stream_sid, "MZ" + "0" * 32]) | odd)
    body = {
        "media": st.fixed_dictionaries({}, optional={"payload": payloads, "track": st.sampled_from(
            ["inbound", "outbound", "inbound_track"]) | odd, "timestamp": numbers, "chunk": numbers}),
        "start": st.fixed_dictionaries({}, optional={
            "streamSid": st.just(stream_sid) | odd, "callSid": st.text(max_size=40) | odd,
            "accountSid": odd, "tracks": odd, "customParameters": st.dictionaries(st.text(max_size=10), odd),
            "mediaFormat": st.fixed_dictionaries({}, optional={"encoding": st.just("audio/x-mulaw") | odd,
                                                               "sampleRate": st.sampled_from([8000, 16000]) | odd,
                                                               "channels": st.just(1) | odd})}),
        "dtmf": st.fixed_dictionaries({"digit": st.text(max_size=3) | odd, "track": st.just("inbound_track")}),
        "mark": st.fixed_dictionaries({"name": st.text(max_size=40) | odd}),
    }
    if isinstance(event, str) and event in body:
        msg[event] = draw(body[event])
    if draw(st.integers(0, 5)) == 0:
        msg[draw(st.text(max_size=8))] = draw(odd)
    return json.dumps(msg)


frames = st.one_of(
    st.tuples(st.just("text"), st.text(max_size=200)),
    st.tuples(st.just("text"), json_values.map(json.dumps)),
    st.tuples(st.just("text"), st.just("[" * 5000 + "]" * 5000)),
    # Nested past msgspec's depth limit inside a message it would otherwise take: RecursionError.
    st.tuples(st.just("text"), st.integers(600, 20_000).map(
        lambda n: '{"event": "mark", "streamSid": "' + STREAM_SID + '", "x": ' + "[" * n + "]" * n + "}")),
    st.tuples(st.just("text"), st.just('{"event": "media", "media": {"payload": "' + "A" * MAX_MESSAGE + '"}}')),
    st.tuples(st.just("binary"), st.binary(max_size=200)),
)


@st.composite
def tolerated(draw: st.DrawFn) -> tuple[str, str]:
    """What the engine must take without closing: media (any audio), marks of any name and keys, with sequence
    numbers, timestamps and chunks out of order, repeated, huge or missing."""
    event = draw(st.sampled_from(["media", "media", "media", "mark", "dtmf"]))
    body = {
        "media": {"track": "inbound", "chunk": str(draw(st.integers(0, 10**9))),
                  "timestamp": str(draw(st.integers(0, 10**9))),
                  "payload": base64.b64encode(draw(st.binary(min_size=160, max_size=160))).decode()},
        "mark": {"name": draw(st.text(max_size=60))},
        "dtmf": {"track": "inbound_track", "digit": draw(st.sampled_from(sorted("0123456789*#ABCD")))},
    }[event]
    msg: dict[str, Any] = {"event": event, "streamSid": STREAM_SID, event: body}
    if (seq := draw(st.none() | st.integers(0, 10**12))) is not None:
        msg["sequenceNumber"] = str(seq)
    return "text", json.dumps(msg)


hostile = st.one_of(frames, twilio_message(STREAM_SID).map(lambda m: ("text", m)))
# A session: how it opens, a run the engine must take (out-of-order media, odd marks, keys), then hostile input.
session = st.tuples(st.sampled_from(["nothing", "connected", "start", "start", "start-then-stop", "bad-signature",
                                     "start-odd-token", "start-twice"]),
                    st.lists(tolerated(), min_size=10, max_size=40), st.lists(hostile, min_size=1, max_size=6))


async def hostile_session(port: int, opening: str, messages: list[tuple[str, str | bytes]]) -> int | str | None:
    """Send one hostile stream; the engine's close code (None: it left the socket open, which is fine too)."""
    stream = PUBLIC.replace("https", "wss") + "/twilio/stream"
    signature = "bad" if opening == "bad-signature" else twilio_signature(AUTH, stream, {})
    async with aiohttp.ClientSession() as http:
        params: dict[str, str] = {}
        if opening.startswith("start"):
            caller = SyntheticCaller(f"http://127.0.0.1:{port}", public_url=PUBLIC, auth_token=AUTH)
            target: StreamTarget = await caller.dial()
            await caller.close()
            params = dict(target.parameters)
            call_sid = caller.call_sid
            if opening == "start-odd-token":  # not ASCII: compare_digest would raise TypeError on it
                params["token"] = params["token"][:-2] + "é"
        try:
            ws = await http.ws_connect(f"ws://127.0.0.1:{port}/twilio/stream",
                                       headers={"X-Twilio-Signature": signature})
        except aiohttp.WSServerHandshakeError as exc:
            assert opening == "bad-signature" and exc.status == 403, exc
            return None
        assert opening != "bad-signature", "an unsigned upgrade was accepted"
        reader = asyncio.ensure_future(engine_close_code(ws))
        try:
            if opening != "nothing":
                await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            if opening.startswith("start"):
                await ws.send_str(json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": STREAM_SID,
                                              "start": {"streamSid": STREAM_SID, "callSid": call_sid,
                                                        "accountSid": "AC1", "tracks": ["inbound"],
                                                        "customParameters": params,
                                                        "mediaFormat": {"encoding": "audio/x-mulaw",
                                                                        "sampleRate": 8000, "channels": 1}}}))
            if opening == "start-twice":  # the same token on a second socket: spent, so refused (1008)
                second = await http.ws_connect(f"ws://127.0.0.1:{port}/twilio/stream",
                                               headers={"X-Twilio-Signature": signature})
                await second.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
                await second.send_str(json.dumps({
                    "event": "start", "streamSid": STREAM_SID,
                    "start": {"streamSid": STREAM_SID, "callSid": call_sid, "customParameters": params,
                              "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}))
                code = await engine_close_code(second)
                assert code == 1008, f"a spent token's second stream closed with {code}"
            for _kind, data in messages:
                await asyncio.wait({reader}, timeout=0.001)
                if reader.done():
                    break  # the engine has closed: Twilio would stop too
                await (ws.send_bytes(data) if isinstance(data, bytes) else ws.send_str(data))
                SENT[0] += 1
            if opening == "start-then-stop" and not ws.closed:
                await ws.send_str(json.dumps({"event": "stop", "streamSid": STREAM_SID}))
            await asyncio.wait({reader}, timeout=0.1)  # the engine answers a bad message by closing at once
        except ConnectionError:
            pass
        finally:
            if not reader.done():
                await ws.close()  # we hang up: the reader sees the connection close
        code = await reader
        return None if code == "ours" else code


async def engine_close_code(ws: aiohttp.ClientWebSocketResponse) -> int | str:
    """Read until the connection closes: the engine's close code, "ours" if we closed first, 1006 if it just
    dropped the connection."""
    while True:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.CLOSE:
            return int(msg.data)
        if msg.type == aiohttp.WSMsgType.CLOSING:
            return "ours"
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return 1006


requests = st.tuples(
    st.sampled_from(["POST", "GET", "PUT", "DELETE"]),
    st.sampled_from(["/twilio/voice", "/twilio/status", "/twilio/amd", "/twilio/stream", "/health", "/metrics", "/",
                     "/twilio/voice/../x", "/calls/CA1/transcript", "/calls/%00/transcript", "/playground/token"])
    | st.text(alphabet="abcdefghijklmnopqrstuvwxyz/%.-_", max_size=20).map(lambda p: "/" + p),
    st.dictionaries(st.sampled_from(["CallSid", "From", "To", "AccountSid", "CallStatus", "Direction", "AnsweredBy",
                                     "MachineDetectionDuration"])
                    | st.text(max_size=8), st.text(max_size=40), max_size=6),
    st.sampled_from(["valid", "none", "garbage"]),
    st.sampled_from(["form", "json", "huge", "binary"]),
)


async def hostile_request(port: int, method: str, path: str, form: dict[str, str], signing: str,
                          body_kind: str) -> int:
    headers = {}
    if signing == "valid":
        headers["X-Twilio-Signature"] = twilio_signature(AUTH, PUBLIC + path, form)
    elif signing == "garbage":
        headers["X-Twilio-Signature"] = "garbage/+=="
    data: Any = urllib.parse.urlencode(form).encode()  # encoded here: aiohttp's form encoder refuses odd names
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    if body_kind == "json":
        data, headers["Content-Type"] = json.dumps(form), "application/json"
    elif body_kind == "huge":
        data = urllib.parse.urlencode({"CallSid": "CA" + "9" * (MAX_MESSAGE * 2)}).encode()
    elif body_kind == "binary":
        data, headers["Content-Type"] = bytes(range(256)) * 4, "application/x-www-form-urlencoded"
    async with aiohttp.ClientSession() as http, http.request(
            method, f"http://127.0.0.1:{port}{path}", data=data, headers=headers, allow_redirects=False) as resp:
        await resp.read()
        return resp.status


# --- the test -------------------------------------------------------------------------------------------

def rejections(engine: EngineRun) -> int:
    h = engine.health()
    assert h is not None, "the engine stopped answering /health"
    return int(h[1]["transport"]["counters"].get("streams_rejected", 0))


def test_hostile_streams_and_requests_hurt_no_one(engine: EngineRun, loop: Loop) -> None:
    from tools.soak_calls import synthesise_voices

    voices = synthesise_voices()
    first = engine.wait_healthy(10)
    incarnations = {name: p["incarnation"] for name, p in first["processes"].items()}
    before = settled_snapshot(engine)
    good = [GoodCaller(engine.port, voices, n) for n in range(2)]
    tasks = [asyncio.run_coroutine_threadsafe(g.run(), loop.loop) for g in good]
    closes: list[int | str | None] = []
    statuses: list[int] = []

    print(f"fuzz seed {SEED} (replay with FUZZ_SEED={SEED})")

    @settings(max_examples=SESSIONS, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @seed(SEED)
    @given(session)
    def stream_fuzz(case: tuple[str, list[tuple[str, str]], list[tuple[str, str | bytes]]]) -> None:
        rejected = rejections(engine)
        opening, accepted, bad = case
        code = loop.run(hostile_session(engine.port, opening, [*accepted, *bad]))
        closes.append(code)
        if code == 1006:
            # We were still writing when the engine closed, and its close frame was lost to the reset: it must
            # have closed this stream on purpose.
            assert rejections(engine) == rejected + 1, f"connection dropped after {case}"
        else:
            assert code is None or code in PROTOCOL_CLOSES, f"closed with {code} after {case}"

    @settings(max_examples=REQUESTS, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @seed(SEED)
    @given(requests)
    def http_fuzz(case: tuple[str, str, dict[str, str], str, str]) -> None:
        status = loop.run(hostile_request(engine.port, *case))
        statuses.append(status)
        assert status < 500, f"HTTP {status} for {case}"

    try:
        stream_fuzz()
        http_fuzz()
    finally:
        for g in good:
            loop.loop.call_soon_threadsafe(g.stop.set)
        for task in tasks:
            task.result(180)
    print(f"fuzz: {len(closes)} streams, {SENT[0]} hostile messages (close codes {sorted(set(map(str, closes)))}), "
          f"{len(statuses)} requests (statuses {sorted(set(statuses))}); good callers answered "
          f"{[g.answers for g in good]}")
    for g in good:
        assert g.problems == [], g.problems
        assert g.answers >= 1
    # Nothing crashed or restarted, and no call is left behind.
    deadline = time.monotonic() + 10
    h = engine.health()
    while (h is None or h[1]["calls_active"]) and time.monotonic() < deadline:
        time.sleep(0.2)
        h = engine.health()
    assert h is not None and h[0] == 200, h
    body = h[1]
    assert {name: p["incarnation"] for name, p in body["processes"].items()} == incarnations
    assert body["calls_active"] == 0
    counters = body["transport"]["counters"]
    assert counters.get("conversation_failures", 0) == 0 and counters.get("outbound_failures", 0) == 0, counters
    # Every good call's inbound audio arrived, all of it.
    ended = {s["call_id"]: s for s in body["transport"]["ended"]}
    for g in good:
        summary = ended[g.c.call_sid]
        ledger = frame_accounting(g.c)
        # Up to the last frame the engine took in (the line may send one more after `stop`, never heard).
        assert summary["frames_in"] == frames_expected(ledger["sent_runs"], summary["last_timestamp_ms"]), \
            (summary, ledger["sent_runs"])
        assert summary["frames_in"] >= ledger["frames_sent"] - 2
        assert summary["inbound_dropped"] == 0 and summary["seq_gaps"] == 0
    after = settled_snapshot(engine)
    assert after["shm_segments"] == before["shm_segments"]
    assert after["processes"] == before["processes"] and after["zombies"] == 0
    assert after["fds"] == before["fds"], (before["fds"], after["fds"])
    assert Path(engine.log_path).read_text().count("Traceback") == 0, engine.log
