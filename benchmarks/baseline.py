"""The reference approach to Spectrum scores, as the baseline for the benchmarks.

    python3 benchmarks/baseline.py MODEL_DIR [--threads N] [--device cpu|cuda] [--out scores.json]

Loads the whole model with transformers (AutoModelForCausalLM, float32), then for every 2-D
`*.weight` parameter inside a numbered layer (the matrices `spectrum` scans by default) calls
torch.linalg.svdvals on it, one matrix at a time, in float32, and applies the score formula:

    sigma     = (q75(S) - q25(S)) / 1.349
    threshold = sigma * (1 + sqrt(min(m,n) / max(m,n)))
    signal    = sum(S[S >  threshold]);  noise = sum(S[S <= threshold])  (1.0 when empty or 0)
    score     = signal / noise / S[0]   (0.0 for an all-zero matrix)

The formula is written out here on purpose instead of importing spectrum's, so the two are
independent. Scores are written as JSON in spectrum's layout: {module: {"snr": x, "type": t}}.
On stderr the last lines are `BASELINE key=value ...` timings and, with CUDA,
`BENCH_PEAK_CUDA_BYTES=<torch.cuda.max_memory_allocated()>`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

from _peak import report_peak_rss  # benchmarks/_peak.py

IQR_TO_SIGMA = 1.349


def module_type(module: str) -> str | None:
    """Part after the first all-digit component, or None outside numbered layers."""
    parts = module.split(".")
    for position, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[position + 1:]) or None
    return None


def score(values: torch.Tensor, rows: int, cols: int) -> float:
    """Spectrum score from descending float32 singular values, computed in float32 like the reference."""
    largest = values[0]
    if float(largest) == 0.0:
        return 0.0
    q25 = torch.quantile(values, 0.25)
    q75 = torch.quantile(values, 0.75)
    sigma = (q75 - q25) / IQR_TO_SIGMA
    threshold = sigma * (1.0 + math.sqrt(min(rows, cols) / max(rows, cols)))
    signal = values[values > threshold].sum()
    noise = values[values <= threshold].sum()
    noise_value = float(noise) if float(noise) > 0 else 1.0
    return float(signal) / noise_value / float(largest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Spectrum scores the reference way: whole model in float32, "
                                     "torch.linalg.svdvals per matrix.")
    parser.add_argument("model_dir")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: every core)")
    parser.add_argument("--device", default="cpu", help="where svdvals runs: cpu or cuda (default: cpu)")
    parser.add_argument("--out", help="write the scores as JSON here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    device = torch.device(args.device)

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    model.eval()
    loaded = time.perf_counter()

    scores: dict[str, dict] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.endswith(".weight") or param.dim() != 2 or not param.is_floating_point():
                continue
            module = name[: -len(".weight")]
            type_name = module_type(module)
            if type_name is None:
                continue  # embeddings, lm_head: outside numbered layers
            matrix = param.detach().to(device)
            values = torch.linalg.svdvals(matrix)  # float32, descending
            rows, cols = matrix.shape
            scores[module] = {"snr": score(values, rows, cols), "type": type_name}
            del matrix, values
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    finished = time.perf_counter()

    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(scores, handle, indent=4)
        os.replace(tmp, args.out)
    print(f"BASELINE matrices={len(scores)} threads={threads} device={device} "
          f"load_s={loaded - started:.3f} svd_s={finished - loaded:.3f} total_s={finished - started:.3f}",
          file=sys.stderr)
    if device.type == "cuda":
        print(f"BENCH_PEAK_CUDA_BYTES={torch.cuda.max_memory_allocated(device)}", file=sys.stderr)
    report_peak_rss()
    return 0


if __name__ == "__main__":
    sys.exit(main())
