"""Per-matrix cost of each exact method, to choose `--method auto`.

    python3 benchmarks/methods.py [--threads 1] [--repeats 3] [--device cpu|cuda]

Times `spectrum.scoring.svd_torch.singular_values` for "gram" (float64 Gram, one triangle) and "svd"
(float64 SVD, tall orientation) on the shapes of real models, plus the reference's float32
`svdvals` on the stored orientation for comparison; prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from threadpoolctl import threadpool_limits

from spectrum.scoring.svd_torch import singular_values

SHAPES = {
    "SmolLM2-135M q/o": (576, 576),
    "SmolLM2-135M k/v": (192, 576),
    "SmolLM2-135M gate/up": (1536, 576),
    "SmolLM2-135M down": (576, 1536),
    "Qwen2.5-0.5B gate/up": (4864, 896),
    "Qwen2.5-0.5B down": (896, 4864),
    "Llama-3-8B k/v": (1024, 4096),
    "Llama-3-8B q/o": (4096, 4096),
    "Llama-3-8B gate/up": (14336, 4096),
    "Llama-3-8B down": (4096, 14336),
}


def timed(function, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", help="substrings of shape names to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(limits=args.threads, user_api="blas")  # NumPy's OpenBLAS (the CPU Gram route) too
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU")
    print(f"device {device}, torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}\n")
    print("| shape | m×n | gram (s) | svd (s) | float32 svdvals as stored (s) | faster |")
    print("|---|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    for name, (rows, cols) in SHAPES.items():
        if args.only and not any(part in name for part in args.only):
            continue
        stored = torch.randn(1, rows, cols, generator=generator).to(torch.bfloat16)
        gram = timed(lambda: singular_values(stored, method="gram", device=device), args.repeats)
        svd = timed(lambda: singular_values(stored, method="svd", device=device), args.repeats)
        matrix = stored[0].to(device).float()
        reference = timed(lambda: torch.linalg.svdvals(matrix), args.repeats)
        faster = "gram" if gram < svd else "svd"
        print(f"| {name} | {rows}×{cols} | {gram:.3f} | {svd:.3f} | {reference:.3f} | {faster} |", flush=True)


if __name__ == "__main__":
    main()
