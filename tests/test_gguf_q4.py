"""The bundled model's re-encoded copies (engine/gguf_q4.py): the same model, its Q4_1 matrices as Q4_0 (the engine's)
or Q8_0, made once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from engine.config import LlmSection
from engine.gguf_q4 import needs_copy, requantized
from engine.llm import LlamaCppBackend, make_backend, resolve_gguf

MESSAGES = [{"role": "system", "content": "You are a helpful phone assistant. Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"}]


STEPS = {"Q8_0": 127, "Q4_0": 8}  # a block's largest magnitude over this: at most how far each weight moves


@pytest.fixture(scope="module", params=["Q8_0", "Q4_0"])
def copy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    source = resolve_gguf("smollm2-135m")
    return source, requantized(source, tmp_path_factory.mktemp("cache"), request.param), request.param


def test_the_copy_re_encodes_the_q4_1_matrices_and_keeps_everything_else(copy: tuple[Path, Path, str]) -> None:
    source, made, kind = copy
    assert needs_copy(source) and not needs_copy(made)
    old, new = GGUFReader(source), GGUFReader(made)
    assert [t.name for t in old.tensors] == [t.name for t in new.tensors]
    for a, b in zip(old.tensors, new.tensors, strict=True):
        assert a.shape.tolist() == b.shape.tolist(), a.name
        if a.tensor_type.name == "Q4_1":
            assert b.tensor_type.name == kind, a.name
        else:
            assert b.tensor_type == a.tensor_type and np.array_equal(a.data, b.data), a.name
    assert set(old.fields) == set(new.fields)
    template = "tokenizer.chat_template"
    assert bytes(new.fields[template].parts[-1]) == bytes(old.fields[template].parts[-1])
    # Each weight moves by at most about one step of its block (Q4_0: an eighth of the block's largest magnitude).
    q = next(t for t in old.tensors if t.name == "blk.0.attn_q.weight")
    w_old = dequantize(q.data, q.tensor_type)
    w_new = dequantize(next(t for t in new.tensors if t.name == q.name).data, GGMLQuantizationType[kind])
    blocks_old, blocks_new = w_old.reshape(-1, 32), w_new.reshape(-1, 32)
    step = np.abs(blocks_old).max(axis=1, keepdims=True) / STEPS[kind]
    assert np.all(np.abs(blocks_new - blocks_old) <= step * 1.01)


def test_the_copy_is_made_once(copy: tuple[Path, Path, str]) -> None:
    source, made, kind = copy
    made_at = made.stat().st_mtime_ns
    assert requantized(source, made.parent.parent, kind) == made and made.stat().st_mtime_ns == made_at
    assert [p.name for p in made.parent.iterdir()] == [made.name]  # no temporary file left behind


def test_the_copy_answers_as_the_model_does(copy: tuple[Path, Path, str]) -> None:
    llama = LlamaCppBackend(copy[1], threads=1, temperature=0.0)
    try:
        deltas: list[str] = []
        # The engine's own system prompt: on the one above even the shipped file answers "Le Grand Paris, le
        # Grand-Bien-Armes..." greedily, and a copy's answer there hangs on noise, whatever its encoding.
        engine_prompt = [{"role": "system", "content": LlmSection().system_prompt}, MESSAGES[1]]
        llama.stream(engine_prompt, deltas.append, max_tokens=20)  # type: ignore[arg-type]
        assert "paris" in "".join(deltas).lower()
    finally:
        llama.close()


def test_the_engine_runs_the_copy_it_is_told_to(copy: tuple[Path, Path, str], tmp_path: Path) -> None:
    made, kind = copy[1], copy[2]
    make_backend(LlmSection(model_cache_dir=str(tmp_path), requantize="off", slots=1, solo_prefill_threads=0)).close()
    assert not list(tmp_path.iterdir())
    make_backend(LlmSection(model_cache_dir=str(tmp_path), requantize=kind.lower(),  # type: ignore[arg-type]
                            slots=1, solo_prefill_threads=0)).close()
    assert [p.name for p in (tmp_path / f"gguf-{kind.lower()}").iterdir()] == [made.name]


def test_the_engine_runs_the_q4_0_copy_by_default() -> None:
    assert LlmSection().requantize == "q4_0"


def test_only_known_encodings_are_made(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Q4_1"):
        requantized(resolve_gguf("smollm2-135m"), tmp_path, "Q4_1")
