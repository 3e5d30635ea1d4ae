"""onnxruntime sessions for the small CPU models that run all call long: Piper's voice, Silero VAD, Smart Turn.

onnxruntime's CPU memory arena keeps every block it ever allocated and grows in big steps (a long sentence's
vocoder buffers, a batch of many calls' windows): a TTS process's RSS went from 166 to 428 MiB over 21 minutes
of calls and never came back. With the arena and the memory pattern off, each run's buffers go back to the
allocator when it ends (bench/tts_rss.py measures it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def cpu_session(model: Path | str | bytes, threads: int = 0, *, arena: bool = False) -> Any:
    """An `onnxruntime.InferenceSession` of `model` on the CPU: `threads` intra-op threads (0: onnxruntime's
    default, one a core), one inter-op; `arena` turns the CPU memory arena and memory pattern back on."""
    import onnxruntime as ort  # here, not at import: the supervisor imports the modules, not the models

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_cpu_mem_arena = arena
    opts.enable_mem_pattern = arena
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
