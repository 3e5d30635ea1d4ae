"""The bundled model's Q4_0 copy (engine/gguf_q4.py): the same model, its Q4_1 matrices re-encoded, made once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from engine.config import LlmSection
from engine.gguf_q4 import needs_copy, q4_0_copy
from engine.llm import LlamaCppBackend, make_backend, resolve_gguf

MESSAGES = [{"role": "system", "content": "You are a helpful phone assistant. Answer briefly."},
            {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    source = resolve_gguf("smollm2-135m")
    return source, q4_0_copy(source, tmp_path_factory.mktemp("cache"))


def test_the_copy_re_encodes_the_q4_1_matrices_and_keeps_everything_else(copy: tuple[Path, Path]) -> None:
    source, made = copy
    assert needs_copy(source) and not needs_copy(made)
    old, new = GGUFReader(source), GGUFReader(made)
    assert [t.name for t in old.tensors] == [t.name for t in new.tensors]
    for a, b in zip(old.tensors, new.tensors, strict=True):
        assert a.shape.tolist() == b.shape.tolist(), a.name
        if a.tensor_type.name == "Q4_1":
            assert b.tensor_type.name == "Q4_0", a.name
        else:
            assert b.tensor_type == a.tensor_type and np.array_equal(a.data, b.data), a.name
    assert set(old.fields) == set(new.fields)
    template = "tokenizer.chat_template"
    assert bytes(new.fields[template].parts[-1]) == bytes(old.fields[template].parts[-1])
    # Each weight moves by at most about one Q4_0 step of its block (an eighth of the block's largest magnitude).
    q = next(t for t in old.tensors if t.name == "blk.0.attn_q.weight")
    w_old = dequantize(q.data, q.tensor_type)
    w_new = dequantize(next(t for t in new.tensors if t.name == q.name).data, GGMLQuantizationType.Q4_0)
    blocks_old, blocks_new = w_old.reshape(-1, 32), w_new.reshape(-1, 32)
    step = np.abs(blocks_old).max(axis=1, keepdims=True) / 8
    assert np.all(np.abs(blocks_new - blocks_old) <= step * 1.01)


def test_the_copy_is_made_once(copy: tuple[Path, Path]) -> None:
    source, made = copy
    made_at = made.stat().st_mtime_ns
    assert q4_0_copy(source, made.parent.parent) == made and made.stat().st_mtime_ns == made_at
    assert [p.name for p in made.parent.iterdir()] == [made.name]  # no temporary file left behind


def test_the_copy_answers_as_the_model_does(copy: tuple[Path, Path]) -> None:
    llama = LlamaCppBackend(copy[1], threads=1, temperature=0.0)
    try:
        deltas: list[str] = []
        llama.stream(MESSAGES, deltas.append, max_tokens=20)  # type: ignore[arg-type]
        assert "paris" in "".join(deltas).lower()
    finally:
        llama.close()


def test_the_engine_runs_the_copy_unless_told_not_to(copy: tuple[Path, Path], tmp_path: Path) -> None:
    make_backend(LlmSection(model_cache_dir=str(tmp_path), requantize_q4_0=False, slots=1,
                            solo_prefill_threads=0)).close()
    assert not (tmp_path / "gguf-q4_0").exists()
    make_backend(LlmSection(model_cache_dir=str(tmp_path), slots=1, solo_prefill_threads=0)).close()
    assert [p.name for p in (tmp_path / "gguf-q4_0").iterdir()] == [copy[1].name]
