"""A live scan (`spectrum.scan_model` of a model in memory) against the checkpoint scan of the same weights.

    python3 benchmarks/live_scan.py [CASE] [--device cpu|cuda] [--threads N] [--repeats 5] [--dtype bfloat16] [--append]

Builds the case if needed (`checkpoints.py`, default smollm2), loads it once with transformers in the
given dtype onto the device, reads the files once (warm page cache), then alternates, in one process
(torch already imported for both): `spectrum.scan(DIR)` (headers, reads, scores) and
`spectrum.scan_model(model)` (the parameters in memory, scored). Prints the medians, checks that the two
give the same scores (1e-9 relative) and, with `--append`, appends the block to RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's spectrum

import torch  # noqa: E402

import spectrum  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, nproc {os.cpu_count()}, {gpu}; Linux {platform.release()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", nargs="?", default="smollm2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--note", default="")
    parser.add_argument("--append", action="store_true", help="append the block to benchmarks/RESULTS.md")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    folder = HERE / ".cache" / args.case
    if not (folder / "BENCHMARK_CHECKPOINT_COMPLETE.json").is_file():
        subprocess.run([sys.executable, str(HERE / "checkpoints.py"), args.case], check=True)
    for path in folder.glob("*.safetensors"):
        path.read_bytes()  # warm page cache for the checkpoint scan
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype)).to(args.device)
    load = os.getloadavg()
    checkpoint_s, live_s = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        stored = spectrum.scan(str(folder), device=args.device, threads=args.threads)
        checkpoint_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        live = spectrum.scan_model(model, device=args.device, threads=args.threads, progress=False)
        live_s.append(time.perf_counter() - started)
    after = os.getloadavg()
    worst = max(abs(live.entries[m].snr - s.snr) / abs(s.snr) for m, s in stored.entries.items() if s.snr)
    same = list(live.entries) == list(stored.entries) and worst <= 1e-9
    checkpoint, alive = statistics.median(checkpoint_s), statistics.median(live_s)
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    block = "\n".join([
        f"## live scan, {args.case} — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {machine()}",
        f"- load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load)}, after "
        f"{'/'.join(f'{x:.2f}' for x in after)}",
        f"- python {platform.python_version()}, torch {torch.__version__}, git {commit}",
        f"- command: `python3 benchmarks/live_scan.py {args.case} --device {args.device} --threads {args.threads} "
        f"--repeats {args.repeats} --dtype {args.dtype}`",
        f"- model loaded once in {args.dtype} on {args.device}; alternating, in one process: `spectrum.scan(DIR)` "
        "(page cache warm) and `spectrum.scan_model(model)`",
        *([f"- note: {args.note}"] if args.note else []),
        "",
        "| scan | wall s (median) | runs |",
        "|---|---:|---|",
        f"| checkpoint `spectrum.scan` | {checkpoint:.2f} | {', '.join(f'{x:.2f}' for x in checkpoint_s)} |",
        f"| live `spectrum.scan_model` | {alive:.2f} | {', '.join(f'{x:.2f}' for x in live_s)} |",
        "",
        f"Live vs checkpoint: {checkpoint / alive:.2f}x the speed ({'no slower' if alive <= checkpoint * 1.05 else 'SLOWER'}"
        f" within 5%); {len(live.entries)} matrices, same names and scores: {'yes' if same else 'NO'} "
        f"(max relative difference {worst:.1e}).",
        "",
    ])
    print(block)
    if args.append:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as handle:
            handle.write("\n" + block)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
