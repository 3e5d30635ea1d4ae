"""What outlives a call, against the whole engine: transcript.json, the signed call-end webhook, memory of the caller
across calls, and a hand-off to a person through Twilio's REST API.

One engine serves the module: the real speech and TTS models, and the echo LLM backend (engine.llm.EchoBackend), whose
replies say which dialogue they were made from ("You said: ... Before that I said: ..."): so what the bot remembers
shows in what it says. A local HTTP server plays both the operator's webhook receiver and Twilio's REST API
(`twilio.api_url`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine.call_transcript import signature_valid
from tools.caller import DEFAULT_ACCOUNT_SID, SyntheticCaller, piper_speech
from tools.cli import main as cli
from tools.engine_run import EngineRun, serve
from tools.solo import free_port

AUTH = "engine-test-auth-token"
PUBLIC = "https://voice.example.test"
SECRET = "end-webhook-secret-0123456789"
PERSON = "+15550009999"
ALICE, BOB = "+15550001111", "+15550003333"


class Receiver:
    """The operator's webhook receiver, and Twilio's REST API: what each was sent. The first POST of each delivery
    gets a 503, so every delivery is retried once."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.rest: list[tuple[str, dict[str, str]]] = []

    async def ended(self, request: web.Request) -> web.Response:
        self.deliveries.append((dict(request.headers), await request.read()))
        return web.Response(status=503 if request.headers["X-Engine-Attempt"] == "1" else 204)

    async def twilio_call(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.rest.append((request.path, {k: str(v) for k, v in form.items()}))
        sid = request.match_info["sid"].removesuffix(".json")
        return web.json_response({"sid": sid, "status": "in-progress"})

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        app = web.Application()
        app.router.add_post("/ended", self.ended)
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{sid}", self.twilio_call)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()

    def delivered(self, call_sid: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
        return [(h, json.loads(b)) for h, b in self.deliveries if json.loads(b)["call_sid"] == call_sid]


@pytest.fixture(scope="module")
def receiver() -> Receiver:
    return Receiver(free_port())


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[EngineRun]:
    tmp = tmp_path_factory.mktemp("after_call")
    run = EngineRun(tmp, ENGINE_TRANSPORT__PUBLIC_URL=PUBLIC, ENGINE_TWILIO__AUTH_TOKEN=AUTH,
                    ENGINE_TWILIO__ACCOUNT_SID=DEFAULT_ACCOUNT_SID,
                    ENGINE_TWILIO__API_URL=f"http://127.0.0.1:{receiver.port}",
                    ENGINE_TRANSPORT__RECORDINGS_DIR=str(tmp / "recordings"), ENGINE_LLM__BACKEND="echo",
                    ENGINE_CONVERSATION__GREETING="", ENGINE_CONVERSATION__TRANSFER_TO=PERSON,
                    ENGINE_CONVERSATION__END_WEBHOOK=f"http://127.0.0.1:{receiver.port}/ended",
                    ENGINE_CONVERSATION__END_WEBHOOK_SECRET=SECRET,
                    ENGINE_MEMORY__ENABLED="true", ENGINE_MEMORY__PATH=str(tmp / "memory" / "memory.sqlite3"))
    yield from serve(run)


def transcript_file(engine: EngineRun, call_sid: str) -> Path:
    return engine.log_path.parent / "recordings" / call_sid / "transcript.json"


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.1)


async def ask(engine: EngineRun, receiver: Receiver, number: str, text: str) -> dict[str, Any]:
    """A call from `number` that says `text`, hears the whole answer, and hangs up: its transcript, as delivered."""
    async with SyntheticCaller(f"http://127.0.0.1:{engine.port}", public_url=PUBLIC, auth_token=AUTH,
                               from_number=number) as c:
        await c.connect(await c.dial(), continuous=True)
        await c.send_audio(piper_speech(text, rate=8000))
        await c.wait_for_marks(1, 40)  # the echo's answer is one sentence or two: its first mark, then quiet
        await c.wait_quiet(1.5, 30)
        await c.hangup()
        await until(lambda: len(receiver.delivered(c.call_sid)) >= 2, 20, "webhook delivery and its retry")
        return receiver.delivered(c.call_sid)[-1][1]


def bot_said(transcript: dict[str, Any]) -> str:
    return " ".join(t["said"] for t in transcript["turns"] if t.get("speaker") == "bot").lower()


def test_transcript_webhook_and_memory_across_calls(engine: EngineRun, receiver: Receiver) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with receiver.running():
            first = await ask(engine, receiver, ALICE, "My name is Alice.")
            again = await ask(engine, receiver, ALICE, "What is my name?")
            stranger = await ask(engine, receiver, BOB, "What is my name?")
        return first, again, stranger

    first, again, stranger = asyncio.run(scenario())
    # The webhook: signed over the body, retried after the 503 under the same delivery id, and the body is the
    # transcript.json written beside the recording.
    (h1, b1), (h2, b2) = [(h, b) for h, b in receiver.deliveries if json.loads(b)["call_sid"] == first["call_sid"]]
    assert signature_valid(SECRET, h2["X-Engine-Signature"], b2, time.time())
    assert not signature_valid("another-secret-0123456789", h2["X-Engine-Signature"], b2, time.time())
    assert not signature_valid(SECRET, h2["X-Engine-Signature"], b2.replace(b"said", b"sold"), time.time())
    assert (h1["X-Engine-Attempt"], h2["X-Engine-Attempt"]) == ("1", "2")
    assert h1["X-Engine-Delivery"] == h2["X-Engine-Delivery"] and b1 == b2
    assert json.loads(transcript_file(engine, first["call_sid"]).read_text()) == first
    # The transcript: the caller's words, then the bot's answer, heard whole; the call's facts.
    assert first["number"] == ALICE and first["direction"] == "inbound" and first["outcome"] == "caller hung up (stop)"
    caller, bot = [t for t in first["turns"] if "text" in t or "said" in t][:2]
    assert caller["speaker"] == "caller" and "name" in caller["text"].lower()
    assert bot["speaker"] == "bot" and bot["said"].lower().startswith("you said") and bot["heard"] == bot["said"]
    assert not bot["interrupted"] and caller["t_s"] <= bot["t_s"] <= first["duration_s"]
    # Memory: the same number's next call goes on from what was said; another number starts afresh.
    # (the echo backend: "You said: <the caller's words>. Before that I said: <the last reply it knows of>.")
    assert f"before that i said: {bot['said'].lower()}" in bot_said(again), again["turns"]
    assert "before that" not in bot_said(stranger), stranger["turns"]


def test_forget_deletes_a_callers_memory(engine: EngineRun, receiver: Receiver,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> dict[str, Any]:
        async with receiver.running():
            await ask(engine, receiver, "+15550004444", "Remember the word pineapple.")
            assert cli(["forget", "+15550004444"]) == 0
            return await ask(engine, receiver, "+15550004444", "What was the word?")

    with pytest.MonkeyPatch.context() as mp:  # `forget` reads the engine's config: its memory.path
        mp.setenv("ENGINE_MEMORY__PATH", str(engine.log_path.parent / "memory" / "memory.sqlite3"))
        after = asyncio.run(scenario())
    assert "forgot +15550004444" in capsys.readouterr().out
    assert "pineapple" not in bot_said(after) and "before that" not in bot_said(after), after["turns"]


def test_pressing_zero_puts_the_caller_through_to_a_person(engine: EngineRun, receiver: Receiver) -> None:
    async def scenario() -> tuple[SyntheticCaller, dict[str, Any]]:
        async with receiver.running():
            async with SyntheticCaller(f"http://127.0.0.1:{engine.port}", public_url=PUBLIC, auth_token=AUTH) as c:
                await c.connect(await c.dial(), continuous=True)
                await c.send_silence(0.5)
                await c.send_dtmf("0")
                await c.send_dtmf("#")
                await c.wait_closed(40)  # the transfer line plays, Twilio is asked, the engine lets the call go
            await until(lambda: len(receiver.delivered(c.call_sid)) >= 2, 20, "the transcript")
            return c, receiver.delivered(c.call_sid)[-1][1]

    c, transcript = asyncio.run(scenario())
    (path, form), = [(p, f) for p, f in receiver.rest if c.call_sid in p]
    assert path == f"/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Calls/{c.call_sid}.json"
    assert f"<Dial><Number>{PERSON}</Number></Dial>" in form["Twiml"]
    assert c.close_code == 1000 and c.heard_seconds > 1.0  # it heard the transfer line first
    events = [t.get("event") for t in transcript["turns"]]
    assert events.index("transfer") < events.index("put through")
    assert transcript["outcome"] == "engine hung up: put through to a person"
    line = next(t for t in transcript["turns"] if t.get("speaker") == "bot")
    assert line["said"] == "Connecting you to a person now. Please hold." and line["heard"] == line["said"]


def test_the_playground_is_off_unless_enabled(engine: EngineRun) -> None:
    import urllib.error
    import urllib.request

    for method, path in (("GET", "/playground/"), ("POST", "/playground/token"), ("GET", "/playground/stream")):
        request = urllib.request.Request(f"http://127.0.0.1:{engine.port}{path}", method=method,
                                         data=b"" if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 404, path
