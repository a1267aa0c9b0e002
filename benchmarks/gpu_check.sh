#!/usr/bin/env bash
# Issue 3's GPU checks, for a machine with a CUDA GPU where torch and transformers are installed and
# nothing can be fetched (the device tool's H100/H200). Two parts, each sized for one 10-minute call:
#
#   bash benchmarks/gpu_check.sh quick [RESULTS_DIR]   # CUDA tests, eigvalsh variants, methods (~4 min)
#   bash benchmarks/gpu_check.sh e2e [RESULTS_DIR]     # Llama-3-8B shapes end to end: 4 streams, then 1 vs the baseline (~8 min)
#
# Results: RESULTS_DIR, else $OUT, else benchmarks/.gpu-results: log.txt (every step's output), and
# for e2e the RESULTS.md block of run.py. Missing pure-Python packages (gguf is not on the device
# image) travel as wheels in .whl/ (benchmarks/README.md says how).
set -uo pipefail
cd "$(dirname "$0")/.."
part=${1:?usage: gpu_check.sh quick|e2e [RESULTS_DIR]}
out=${2:-${OUT:-benchmarks/.gpu-results}}
mkdir -p "$out"
log="$out/log.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! python3 -c "import gguf" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, output to the log, rc and seconds after it
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  echo "== $name (limit ${limit} s): $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  echo "== $name: rc $rc, $(( $(date +%s) - start )) s" | tee -a "$log"
}

case "$part" in
  quick)
    step machine 30 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g | head -2;
      python3 -c "import torch, transformers; print(\"torch\", torch.__version__, \"transformers\", transformers.__version__, torch.cuda.get_device_name(0))"'
    # MiniLM's wheel (83 MB) is too big to carry: the CUDA tests run on the synthetic checkpoints.
    step tests 120 python3 -m pytest -q -p no:cacheprovider tests/scoring/test_svd_torch.py tests/scoring/test_pipeline.py -k "cuda and not minilm"
    step cuda_eig 90 python3 benchmarks/cuda_eig.py --size 4096 --count 16 --streams 2 4 8
    step cuda_eig_1024 30 python3 benchmarks/cuda_eig.py --size 1024 --count 64 --streams 2 4 8
    step methods 150 python3 benchmarks/methods.py --device cuda --repeats 3
    ;;
  e2e)
    step checkpoint 170 python3 benchmarks/checkpoints.py llama8b
    # spectrum alone with its batches on 4 CUDA streams (one worker thread each), then the default
    # (one stream) against the baseline.
    step e2e_streams4 90 env SPECTRUM_CUDA_STREAMS=4 python3 benchmarks/run.py llama8b --device cuda --repeats 1 \
      --skip-baseline --timeout 80 --results "$out/RESULTS.md" --note "SPECTRUM_CUDA_STREAMS=4"
    step e2e 330 python3 benchmarks/run.py llama8b --device cuda --repeats 1 --timeout 300 --results "$out/RESULTS.md"
    ;;
  *)
    echo "gpu_check.sh: unknown part '$part'; use quick or e2e" >&2
    exit 2
    ;;
esac
