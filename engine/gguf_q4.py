"""A Q4_0 copy of a GGUF model whose matrices are Q4_1, made once into the model cache.

The bundled SmolLM2-135M ships as Q4_1. On x86 CPUs, ggml repacks Q4_0 weights at load time
into interleaved blocks (AVX2 kernels that multiply several rows at once), but it has no such
kernels for Q4_1. So Q4_1 runs on the generic path: a turn's prefill costs ~9-17 ms a token on
one core, about as much as decoding does.

This module re-encodes every Q4_1 tensor as Q4_0 (4 bits and one scale per 32 weights, from
the dequantised Q4_1 values) and keeps every other tensor and all metadata as they are. The
token embedding stays Q8_0 and the norms F32. Encoding a second time costs a little precision,
about the step from Q4_1 to Q4_0.

The copy is keyed by the source file's hash. It is written under a temporary name and renamed
into place, so a process starting beside this one never reads half a file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

SOURCE_TYPE = "Q4_1"
TARGET_TYPE = "Q4_0"


def needs_copy(model: Path) -> bool:
    """Whether `model` has Q4_1 matrices (that a Q4_0 copy would run faster)."""
    from gguf import GGUFReader

    return any(t.tensor_type.name == SOURCE_TYPE for t in GGUFReader(model).tensors)


def q4_0_copy(model: Path, cache_dir: Path) -> Path:
    """`model` with its Q4_1 tensors as Q4_0: made once into `cache_dir` (~10 s and ~0.5 GB for SmolLM2-135M)."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    target = cache_dir / "gguf-q4_0" / f"{model.stem}-{digest}.{TARGET_TYPE}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}-{os.getpid()}")
    try:
        _write_copy(model, tmp)
        os.replace(tmp, target)  # atomic: a process starting beside this one never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _write_copy(model: Path, out: Path) -> None:
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
    source, target = GGMLQuantizationType[SOURCE_TYPE], GGMLQuantizationType[TARGET_TYPE]
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
