"""LLM backends: llama.cpp with the bundled SmolLM2, and the OpenAI-compatible client against a local server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from engine.llm import LlamaCppBackend, LlmError, OpenAIBackend, resolve_gguf
from tools.solo import free_port

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "system", "content": "You are a helpful phone assistant. Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def llama() -> LlamaCppBackend:
    return LlamaCppBackend(resolve_gguf("smollm2-135m"), threads=2, temperature=0.0)  # greedy: same reply each run


def test_llama_cpp_streams_a_reply(llama: LlamaCppBackend) -> None:
    deltas: list[str] = []
    llama.stream(MESSAGES, lambda d: deltas.append(d) or False, max_tokens=40)
    assert len(deltas) > 2 and "paris" in "".join(deltas).lower()


def test_llama_cpp_stops_when_asked(llama: LlamaCppBackend) -> None:
    full: list[str] = []
    llama.stream([MESSAGES[0], {"role": "user", "content": "Tell me a long story about a dragon."}],
                 lambda d: full.append(d) or False, max_tokens=80)
    cut: list[str] = []
    llama.stream([MESSAGES[0], {"role": "user", "content": "Tell me a long story about a dragon."}],
                 lambda d: cut.append(d) is None and len(cut) >= 3, max_tokens=80)
    assert len(cut) == 3 < len(full)


def prompt_tokens_read(llama: LlamaCppBackend) -> int:
    """The server's count of prompt tokens it has read in (not those it found in a KV already)."""
    metrics = llama._server.handle_metrics()
    return int(next(line.split()[-1] for line in metrics.splitlines()
                    if line.startswith("llamacpp:prompt_tokens_total ")))


def test_llama_cpp_goes_on_from_a_replys_own_text_as_if_never_stopped(llama: LlamaCppBackend) -> None:
    """A reply that gave way to another's first piece (engine.first_pieces) is continued from its text as an
    assistant message: greedy, the joined reply is the one made without a stop."""
    ask = [MESSAGES[0], {"role": "user", "content": "Tell me a fun fact about cats."}]
    full: list[str] = []
    llama.stream(ask, lambda d: full.append(d) or False, max_tokens=40)
    head: list[str] = []
    llama.stream(ask, lambda d: head.append(d) is None and len(head) >= 8, max_tokens=40)
    rest: list[str] = []
    before = prompt_tokens_read(llama)
    llama.stream([*ask, {"role": "assistant", "content": "".join(head)}], lambda d: rest.append(d) or False,
                 max_tokens=40 - len(head))
    assert len(head) == 8 and rest
    assert "".join(head + rest) == "".join(full)
    assert prompt_tokens_read(llama) - before < 4  # the slot's KV still held the reply: nothing read in again


def test_llama_cpp_solo_slot_is_a_context_of_its_own_on_the_same_model() -> None:
    """The slot after the shared ones is a second server's (its batches on more threads): the same model, so the
    same greedy reply as the shared slots give."""
    llama = LlamaCppBackend(resolve_gguf("smollm2-135m"), threads=1, temperature=0.0, slots=2,
                            solo_prefill_threads=2)
    try:
        assert llama.solo_slot == 2
        replies = []
        for slot in (0, llama.solo_slot, 1):
            deltas: list[str] = []
            llama.stream(MESSAGES, deltas.append, max_tokens=20, slot=slot)  # None: never stop early
            replies.append("".join(deltas))
        assert "paris" in replies[0].lower() and replies[0] == replies[1] == replies[2]
    finally:
        llama.close()
    assert LlamaCppBackend(resolve_gguf("smollm2-135m"), slots=2).solo_slot is None  # off unless asked for


@pytest.mark.parametrize("cache_mib", [64, 0])
def test_a_call_whose_slot_another_call_took_gets_its_dialogue_back_from_ram(cache_mib: int) -> None:
    """More live calls than slots share one: with the RAM prompt cache (llm.prompt_cache_mib), a call coming
    back to the slot reads in only its new words; without it, its whole dialogue again."""
    llama = LlamaCppBackend(resolve_gguf("smollm2-135m"), threads=1, temperature=0.0, slots=1,
                            prompt_cache_mib=cache_mib)
    history = [{"role": "user" if i % 2 == 0 else "assistant",
                "content": f"Turn {i}: the old harbour town of Saint Malo has granite walls and high tides."}
               for i in range(12)]  # ~300 tokens
    call_a = [MESSAGES[0], *history]
    call_b = [MESSAGES[0], {"role": "user", "content": "Where can I buy a train ticket to Lyon?"}]
    try:
        llama.stream([*call_a, {"role": "user", "content": "And the beaches?"}], lambda d: True, 4, 0)
        llama.stream(call_b, lambda d: True, 4, 0)  # the other call takes the slot
        before = prompt_tokens_read(llama)
        llama.stream([*call_a, {"role": "user", "content": "And the food?"}], lambda d: True, 4, 0)
        read = prompt_tokens_read(llama) - before
    finally:
        llama.close()
    if cache_mib:
        assert read < 40  # its new words, and the chat template's around them
    else:
        assert read > 250


def test_llama_cpp_backend_closes_at_once_after_it_opens() -> None:
    """A server dropped before its loop thread started used to hang its destructor (5 times in 16): an llm process
    told to stop just after it loaded never exited. In a child process, so that a hang fails instead of blocking."""
    script = ("from engine.llm import LlamaCppBackend, resolve_gguf\n"
              "for _ in range(8):\n"
              "    LlamaCppBackend(resolve_gguf('smollm2-135m'), slots=2).close()\n"
              "print('closed')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "closed", done.stderr[-2000:]


def test_llama_cpp_servers_http_port_refuses_the_boxs_other_users(llama: LlamaCppBackend) -> None:
    """xllamacpp listens on 127.0.0.1 whether or not anyone uses it; the engine calls it directly, so its HTTP
    requests need a key that nobody holds."""
    address = llama._server.listening_address
    assert address.startswith("http://127.0.0.1:")
    body = json.dumps({"messages": MESSAGES, "max_tokens": 3}).encode()
    request = urllib.request.Request(address + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


class FakeOpenAI:
    """A local OpenAI-compatible server of the test's own: streams a reply one word every 20 ms."""

    def __init__(self, words: list[str], status: int = 200) -> None:
        self.words, self.status = words, status
        self.requests: list[dict[str, object]] = []
        self.sent = 0
        self.disconnected = threading.Event()
        self.port = free_port()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        if self.status != 200:
            return web.Response(status=self.status, text='{"error": "overloaded"}')
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for word in self.words:
                chunk = {"choices": [{"index": 0, "delta": {"content": word + " "}}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.sent += 1
                await asyncio.sleep(0.02)
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise
        return resp

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    yield FakeOpenAI([f"word{i}" for i in range(50)])


def test_openai_backend_streams(fake: FakeOpenAI) -> None:
    backend = OpenAIBackend(f"http://127.0.0.1:{fake.port}/v1", "gemma-3-27b")
    deltas: list[str] = []
    backend.stream(MESSAGES, lambda d: deltas.append(d) or False, max_tokens=64)
    assert "".join(deltas).split() == [f"word{i}" for i in range(50)]
    assert fake.requests[0]["stream"] is True and fake.requests[0]["messages"] == MESSAGES


def test_openai_backend_cancel_closes_the_stream(fake: FakeOpenAI) -> None:
    backend = OpenAIBackend(f"http://127.0.0.1:{fake.port}/v1", "m")
    deltas: list[str] = []
    backend.stream(MESSAGES, lambda d: deltas.append(d) is None and len(deltas) >= 5, max_tokens=64)
    assert len(deltas) == 5
    assert fake.disconnected.wait(5)  # the server saw the connection go: vLLM would abort the request
    time.sleep(0.1)
    assert fake.sent < 50


def test_openai_backend_errors_are_clear() -> None:
    failing = FakeOpenAI([], status=503)
    with pytest.raises(LlmError, match="HTTP 503"):
        OpenAIBackend(f"http://127.0.0.1:{failing.port}/v1", "m").stream(MESSAGES, lambda d: False, 10)
    with pytest.raises(LlmError):
        OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "m", timeout_s=2).stream(MESSAGES, lambda d: False, 10)
