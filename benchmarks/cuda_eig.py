"""How to run many float64 eigvalsh calls on one GPU fastest: the step that dominates a CUDA scan.

    python3 benchmarks/cuda_eig.py [--size 4096] [--count 16] [--streams 2 4 8] [--device cpu]

A Llama-3-8B scan computes 162 eigenvalue problems of size 4096 in float64 (q, o, gate, up, down
of 32 layers, and the embeddings when asked). cuSOLVER's `syevd` is latency-bound at that size (its
tridiagonal reduction is thousands of small steps), and torch loops over a batch one matrix at a
time for n > 32, so one stream may leave most of the GPU idle. This times `--count` Gram matrices
of `--size` through:

- loop: one `torch.linalg.eigvalsh` per matrix, on the default stream (what `spectrum.scoring.svd_torch` does);
- batched: one call on the (count, n, n) stack;
- magma: the loop with `torch.backends.cuda.preferred_linalg_library("magma")`;
- streams K: K threads, each with its own CUDA stream, splitting the matrices between them.

It checks that every variant gives the loop's eigenvalues (1e-12 relative to the largest) and prints
a Markdown table: seconds for all matrices, and per matrix. `--device cpu` runs the same code with
plain threads instead of streams (a check of the script itself, not a measurement).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time

import torch


def gram_stack(count: int, size: int, device: torch.device) -> torch.Tensor:
    """(count, size, size) float64 Gram matrices of random (1.5 size, size) matrices with a spike."""
    generator = torch.Generator(device=device).manual_seed(0)
    stack = torch.randn(count, size + size // 2, size, generator=generator, device=device, dtype=torch.float64)
    stack[:, :, 0] *= 50.0  # one dominant direction, as real attention matrices have
    return stack.mT @ stack


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result


def loop(grams: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.linalg.eigvalsh(gram) for gram in grams])


def with_streams(grams: torch.Tensor, streams: int) -> torch.Tensor:
    """The matrices split between `streams` threads, each issuing its share on its own stream."""
    out = torch.empty(grams.shape[:2], dtype=grams.dtype, device=grams.device)
    errors: list[BaseException] = []

    def work(first: int) -> None:
        try:
            on_cuda = grams.device.type == "cuda"
            stream = torch.cuda.Stream(device=grams.device) if on_cuda else None
            with torch.cuda.stream(stream) if on_cuda else contextlib.nullcontext():
                for index in range(first, grams.shape[0], streams):
                    out[index] = torch.linalg.eigvalsh(grams[index])
            if stream is not None:
                stream.synchronize()
        except BaseException as err:  # noqa: BLE001 - re-raised below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(first,)) for first in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--streams", type=int, nargs="*", default=[2, 4, 8])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to check the script")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("cuda_eig.py: torch sees no CUDA GPU; --device cpu checks the script", file=sys.stderr)
        return 2
    grams = gram_stack(args.count, args.size, device)
    torch.linalg.eigvalsh(grams[0])  # cuSOLVER's handle and workspace, outside the timings
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}: {args.count} float64 eigvalsh of {args.size}x{args.size}\n")
    print("| variant | total s | per matrix s | max deviation from loop |")
    print("|---|---:|---:|---:|")
    reference_s, reference = timed(lambda: loop(grams), device)
    scale = float(reference.abs().max())
    variants = [("loop (spectrum.scoring.svd_torch)", lambda: loop(grams)), ("batched call", lambda: torch.linalg.eigvalsh(grams))]
    variants += [(f"streams {count}", lambda count=count: with_streams(grams, count)) for count in args.streams]
    rows = [("loop (spectrum.scoring.svd_torch), first run", reference_s, reference)]
    for name, function in variants:
        seconds, values = timed(function, device)
        rows.append((name, seconds, values))
    if device.type == "cuda":
        previous = torch.backends.cuda.preferred_linalg_library()
        try:
            torch.backends.cuda.preferred_linalg_library("magma")
            torch.linalg.eigvalsh(grams[0])
            seconds, values = timed(lambda: loop(grams), device)
            rows.append(("magma loop", seconds, values))
        except RuntimeError as err:
            print(f"magma: {err}", file=sys.stderr)
        finally:
            torch.backends.cuda.preferred_linalg_library(previous)
    for name, seconds, values in rows:
        deviation = float((values - reference).abs().max()) / scale
        print(f"| {name} | {seconds:.3f} | {seconds / args.count:.4f} | {deviation:.1e} |", flush=True)
        if deviation > 1e-12:
            print(f"cuda_eig.py: {name} deviates from the loop by {deviation:.1e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
