"""The browser playground in a real browser: Debian's Chromium, headless, driven over the DevTools protocol, its
microphone a WAV of speech (`--use-file-for-fake-audio-capture`). The engine must transcribe what the page's
microphone said, its audio must reach the page, and the marks the page echoes must be the ones the engine sent, each
once its audio played.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from tests.test_playground import own_address
from tools.caller import piper_speech
from tools.engine_run import EngineRun, serve
from tools.solo import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (tools/setup.sh --test)")

SENTENCE = "What is the capital of France?"
SECRET = "playground-secret-0123456789"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineRun]:
    tmp = tmp_path_factory.mktemp("playground")
    run = EngineRun(tmp, ENGINE_PLAYGROUND__ENABLED="true", ENGINE_PLAYGROUND__SECRET=SECRET,
                    ENGINE_TRANSPORT__HOST="0.0.0.0", ENGINE_LLM__BACKEND="echo",
                    ENGINE_CONVERSATION__GREETING="Hello.", ENGINE_TRANSPORT__RECORDINGS_DIR=str(tmp / "recordings"))
    yield from serve(run)


def speech_wav(path: Path) -> Path:
    """The fake microphone: the sentence, then silence (Chromium plays the file in a loop)."""
    rate = 16000
    pcm = np.concatenate([np.zeros(rate, np.int16), piper_speech(SENTENCE, rate=rate), np.zeros(6 * rate, np.int16)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


class Browser:
    """Headless Chromium and one page of it, over the DevTools protocol."""

    def __init__(self, tmp: Path, microphone: Path, origin: str) -> None:
        assert CHROMIUM is not None
        self.port = free_port()
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio",
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             f"--use-file-for-fake-audio-capture={microphone}", "--autoplay-policy=no-user-gesture-required",
             f"--unsafely-treat-insecure-origin-as-secure={origin}",  # the microphone off localhost, over http
             f"--remote-debugging-port={self.port}", f"--user-data-dir={tmp / 'chromium'}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "chromium.log", "w"))  # noqa: SIM115
        self.ids = itertools.count(1)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self.session = aiohttp.ClientSession()
        deadline = time.monotonic() + 30
        while True:
            try:
                async with self.session.get(f"http://127.0.0.1:{self.port}/json/list") as r:
                    pages = [t for t in await r.json() if t["type"] == "page"]
                if pages:
                    break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline and self.proc.poll() is None, "chromium did not start"
            await asyncio.sleep(0.2)
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=64 << 20)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        n = next(self.ids)
        await self.ws.send_json({"id": n, "method": method, "params": params})
        while True:
            msg = json.loads((await self.ws.receive(timeout=30)).data)
            if msg.get("id") == n:
                assert "error" not in msg, msg
                return dict(msg["result"])

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"]))

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def recorded_marks(engine: EngineRun, call_sid: str) -> list[str]:
    path = engine.log_path.parent / "recordings" / call_sid / "events.jsonl"
    return [e["name"] for e in map(json.loads, path.read_text().splitlines()) if e["event"] == "mark"]


@pytest.mark.parametrize("where", ["loopback", "off loopback, with the key"])
def test_a_browser_call_is_heard_answered_and_its_marks_echoed(engine: EngineRun, tmp_path: Path, where: str) -> None:
    shot = tmp_path / "playground-mid-call.png"
    host = "127.0.0.1" if where == "loopback" else own_address()
    if host is None:
        pytest.skip("this host has no address but loopback")
    origin = f"http://{host}:{engine.port}"
    page = f"{origin}/playground/?autostart=1" + ("" if where == "loopback" else f"#key={SECRET}")

    async def scenario() -> dict[str, Any]:
        browser = Browser(tmp_path, speech_wav(tmp_path / "microphone.wav"), origin)
        try:
            await browser.open()
            await browser.call("Page.navigate", url=page)
            deadline = time.monotonic() + 90
            pg: dict[str, Any] = {}
            while time.monotonic() < deadline:
                pg = json.loads(await browser.evaluate("JSON.stringify(window.pg || {})") or "{}")
                assert not pg.get("error"), pg
                bot = [t for t in pg.get("turns", []) if t.get("speaker") == "bot" and not t.get("verbatim")]
                if bot and bot[-1].get("heard") is not None:  # an answer to the microphone, played to its end
                    break
                await asyncio.sleep(0.5)
            await browser.screenshot(shot)
            await browser.evaluate("document.getElementById('call').click()")  # hang up
            await asyncio.sleep(2.0)
            return dict(json.loads(await browser.evaluate("JSON.stringify(window.pg)")))
        finally:
            await browser.close()

    pg = asyncio.run(scenario())
    caller = " ".join(t["text"].lower() for t in pg["turns"] if t.get("speaker") == "caller" and "text" in t)
    assert len({"capital", "france"} & set(caller.replace("?", " ").replace(".", " ").split())) >= 1, pg["turns"]
    answers = [t for t in pg["turns"] if t.get("speaker") == "bot" and not t.get("verbatim")]
    assert answers and answers[0]["said"].lower().startswith("you said"), pg["turns"]
    assert pg["framesSent"] > 100 and pg["mediaReceived"] > 50  # 20 ms frames each way
    # Every mark the engine sent came back, in order, and the engine took exactly those.
    assert pg["marksReceived"] and pg["marksEchoed"] == pg["marksReceived"][:len(pg["marksEchoed"])]
    assert len(pg["marksEchoed"]) >= len(pg["marksReceived"]) - 1
    assert recorded_marks(engine, pg["callSid"]) == pg["marksEchoed"]
    assert shot.stat().st_size > 10_000
