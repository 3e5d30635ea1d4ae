"""A faster-running copy of a GGUF model whose matrices are Q4_1, made once into the model cache.

The bundled SmolLM2-135M ships as Q4_1. On x86 CPUs, ggml repacks Q4_0 and Q8_0 weights at load
time into interleaved blocks (AVX2 kernels that multiply several rows at once), but it has no such
kernels for Q4_1. So Q4_1 runs on the generic path: a turn's prefill costs ~9-17 ms a token on
one core, about as much as decoding does.

This module re-encodes every Q4_1 tensor as `target` from the dequantised Q4_1 values, and keeps
every other tensor and all metadata as they are (the token embedding stays Q8_0, the norms F32):
- Q4_0 (the engine's default, `llm.requantize`): 4 bits, one scale per 32 weights. The fastest,
  but encoding a second time at 4 bits moves the model about as far again as the first time did
  (bench/q4_0.py: next-token KL 0.25 nats from the shipped file, the same top token 71 %).
- Q8_0: 8 bits and one scale per 32 weights, so each weight moves by at most 1/254 of its block's
  largest magnitude; next-token distributions stay those of the shipped file (KL 0.006 nats, the
  same top token 94 %). Slower to decode than Q4_0 (24.2 vs 18.8 ms a token on one thread).

The copy is keyed by the source file's hash. It is written under a temporary name and renamed
into place, so a process starting beside this one never reads half a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.file_digest import file_digest

SOURCE_TYPE = "Q4_1"
TARGETS = ("Q4_0", "Q8_0")


def needs_copy(model: Path) -> bool:
    """Whether `model` has Q4_1 matrices (that a Q4_0 copy would run faster)."""
    from gguf import GGUFReader

    return any(t.tensor_type.name == SOURCE_TYPE for t in GGUFReader(model).tensors)


def requantized(model: Path, cache_dir: Path, target_type: str = "Q4_0") -> Path:
    """`model` with its Q4_1 tensors as `target_type` (one of TARGETS): made once into `cache_dir` (~10 s and
    ~0.5 GB for SmolLM2-135M)."""
    if target_type not in TARGETS:
        raise ValueError(f"re-encoding as {target_type!r}: only {TARGETS}")
    digest = file_digest(model, cache_dir)[:16]
    target = cache_dir / f"gguf-{target_type.lower()}" / f"{model.stem}-{digest}.{target_type}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}-{os.getpid()}")
    try:
        _write_copy(model, tmp, target_type)
        os.replace(tmp, target)  # atomic: a process starting beside this one never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _write_copy(model: Path, out: Path, target_type: str) -> None:
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize, quantize

    reader = GGUFReader(model)
    arch = reader.fields["general.architecture"]
    writer = GGUFWriter(out, bytes(arch.parts[arch.data[0]]).decode())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":  # the writer adds these itself
            continue
        kind = field.types[0]
        if kind == GGUFValueType.ARRAY:
            item = field.types[-1]
            writer.add_key_value(name, [_value(field.parts[i], item) for i in field.data], kind, sub_type=item)
        else:
            writer.add_key_value(name, _value(field.parts[field.data[0]], kind), kind)
    source, target = GGMLQuantizationType[SOURCE_TYPE], GGMLQuantizationType[target_type]
    for tensor in reader.tensors:
        if tensor.tensor_type == source:
            shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))  # GGUF lists dimensions innermost first
            data = quantize(dequantize(tensor.data, source).reshape(shape), target)
            writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=target)
        else:
            raw_dtype = None if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16) \
                else tensor.tensor_type
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _value(part: Any, kind: Any) -> Any:
    from gguf import GGUFValueType

    if kind == GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    return part.tolist()[0]
