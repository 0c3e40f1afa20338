#!/usr/bin/env bash
# Download, on this (CPU) machine, the wheels the lent GPU machine lacks (see ../shared/GPU.md), into .whl/.
# The GPU machine has torch, accelerate and nvcc but no trl, deepspeed, omegaconf, gguf, ...; it has no network.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any -d .whl \
    transformers==5.24.0 trl==1.16.0 peft==0.21.2 datasets==5.2.0 dill multiprocess omegaconf==2.4.0 gguf hjson \
    pydantic pydantic-core annotated-types typing-inspection safetensors tokenizers huggingface_hub
python3 -m pip wheel -q --no-deps -w .whl deepspeed==0.19.8 antlr4-python3-runtime==4.9.3
python3 -m pip wheel -q --no-deps -w .whl .   # emoreg itself
du -sh .whl
