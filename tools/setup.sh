#!/usr/bin/env bash
# Install everything the engine needs on a fresh Debian/Ubuntu machine, into ./.venv.
#   bash tools/setup.sh          the engine (embedded CPU default: no torch, no GPU, no internet at run time)
#   bash tools/setup.sh --test   the engine plus what the test suite needs
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
if [[ "${1:-}" == "--test" ]]; then extras="[test]"; fi

# Debian packages: none needed yet beyond Python itself.
if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
    if command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq python3-venv
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
echo "setup done: $(.venv/bin/python --version), engine installed in .venv"
