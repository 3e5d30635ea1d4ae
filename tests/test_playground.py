"""The playground's lines and who may have them, and each call's transcript as it happens (procs/playground.py), with
the synthetic caller speaking the Media Streams protocol to /playground/stream as the page does."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tools.caller import StreamTarget, SyntheticCaller, piper_speech
from tools.engine_run import EngineRun, serve

SECRET = "playground-secret-0123456789"


def own_address() -> str | None:
    """This host's address on its network (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineRun]:
    run = EngineRun(tmp_path_factory.mktemp("playground"), ENGINE_TRANSPORT__HOST="0.0.0.0",
                    ENGINE_PLAYGROUND__ENABLED="true", ENGINE_PLAYGROUND__SECRET=SECRET, ENGINE_LLM__BACKEND="echo",
                    ENGINE_CONVERSATION__GREETING="")
    yield from serve(run)


def http(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            body = r.read()
            return r.status, json.loads(body) if r.headers.get_content_type() == "application/json" else body
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def line(engine: EngineRun) -> dict[str, Any]:
    status, body = http("POST", f"http://127.0.0.1:{engine.port}/playground/token")
    assert status == 200, body
    return dict(body)


def caller_on(engine: EngineRun, given: dict[str, Any]) -> tuple[SyntheticCaller, StreamTarget]:
    c = SyntheticCaller(f"http://127.0.0.1:{engine.port}", public_url=f"http://127.0.0.1:{engine.port}",
                        auth_token="unused", call_sid=given["call_sid"])
    return c, StreamTarget(url=f"ws://127.0.0.1:{engine.port}{given['stream_url']}",
                           parameters={"token": given["token"]})


def test_a_playground_call_is_a_call_and_its_transcript_is_readable_with_its_token(engine: EngineRun) -> None:
    given = line(engine)
    base = f"http://127.0.0.1:{engine.port}"

    def transcript(token: str) -> tuple[int, Any]:
        return http("GET", f"{base}/calls/{given['call_sid']}/transcript", {"Authorization": f"Bearer {token}"})

    async def scenario() -> dict[str, Any]:
        c, target = caller_on(engine, given)
        async with c:
            await c.connect(target, continuous=True)
            await c.send_audio(piper_speech("What is the capital of France?", rate=8000))
            await c.wait_for_marks(1, 40)
            await c.wait_quiet(1.0, 30)
            status, live = await asyncio.to_thread(transcript, given["token"])
            assert status == 200 and live["live"], live
            await c.hangup()
        return dict(live)

    live = asyncio.run(scenario())
    assert [t["speaker"] for t in live["turns"]] == ["caller", "bot"]
    assert {"capital", "france"} & set(live["turns"][0]["text"].lower().replace("?", " ").split()), live["turns"]
    assert live["turns"][1]["said"].startswith("You said")
    deadline = time.monotonic() + 10
    while (ended := transcript(given["token"]))[1]["live"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ended[0] == 200 and ended[1]["outcome"] == "caller hung up (stop)"
    assert http("GET", f"{base}/calls/{given['call_sid']}/transcript")[0] == 200  # an operator (loopback) too


def test_a_token_opens_one_stream_for_its_own_call_only(engine: EngineRun) -> None:
    async def scenario() -> tuple[int | None, int | None]:
        given, other = line(engine), line(engine)
        c, target = caller_on(engine, given)
        async with c:
            await c.connect(target, continuous=True)
            again, _ = caller_on(engine, given)
            async with again:  # the same token again, while the first call is up
                await again.connect(target)
                await again.wait_closed(10)
            stolen, _ = caller_on(engine, other)  # another call's sid with this call's token
            async with stolen:
                await stolen.connect(target)
                await stolen.wait_closed(10)
            await c.hangup()
        return again.close_code, stolen.close_code

    assert asyncio.run(scenario()) == (1008, 1008)


@pytest.mark.skipif(own_address() is None, reason="this host has no address but loopback")
def test_off_loopback_a_line_needs_the_secret_and_a_transcript_its_calls_token(engine: EngineRun) -> None:
    base = f"http://{own_address()}:{engine.port}"
    assert http("POST", f"{base}/playground/token")[0] == 403
    assert http("POST", f"{base}/playground/token", {"Authorization": "Bearer wrong"})[0] == 403
    status, given = http("POST", f"{base}/playground/token", {"Authorization": f"Bearer {SECRET}"})
    assert status == 200 and given["call_sid"].startswith("PG")
    status, page = http("GET", f"{base}/playground/")
    assert status == 200 and b"getUserMedia" in page  # the page holds nothing secret; its calls need the key

    async def short_call() -> None:
        c, target = caller_on(engine, given)
        async with c:
            await c.connect(target, continuous=True)
            await c.send_silence(0.5)
            await c.hangup()

    asyncio.run(short_call())
    url = f"{base}/calls/{given['call_sid']}/transcript"
    deadline = time.monotonic() + 10
    while http("GET", url, {"Authorization": f"Bearer {given['token']}"})[0] != 200:
        assert time.monotonic() < deadline, "the call's own token never read its transcript"
        time.sleep(0.2)
    other = line(engine)["token"]
    assert http("GET", url, {"Authorization": f"Bearer {other}"})[0] == 404  # another call's token reads nothing
    assert http("GET", url)[0] == 404  # nor does anyone else off loopback
