"""The same scan by two commits of spectrum, alternating on one machine: does a change make it slower?

    python3 benchmarks/compare_commits.py OLD NEW [--case smollm2] [--repeats 7] [--threads N] [--append]

Checks each commit out into a temporary git worktree (nothing is installed; each run gets its tree on
PYTHONPATH), warms the page cache, then alternates, OLD first:

    python3 -m spectrum --model benchmarks/.cache/<case> --rescan --quiet --cache-dir <tmp> --output <tmp>/x.yaml --threads N --top-percent 25

and reports per commit the median wall time and the child's user CPU time, and whether the two wrote
byte-identical scores files and YAML. Ratios measured in one run are what compare; absolute times differ
from machine to machine (and from hour to hour on a shared one).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def run_once(tree: Path, model: Path, threads: int) -> tuple[float, float, bytes, bytes]:
    """(wall s, user CPU s, scores file bytes, YAML bytes) of one scan by the checkout at `tree`."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=str(tree))
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "spectrum", "--model", str(model), "--rescan", "--quiet", "--cache-dir",
                        f"{tmp}/cache", "--output", f"{tmp}/x.yaml", "--threads", str(threads), "--top-percent", "25"],
                       env=env, cwd=tmp, check=True)
        wall = time.perf_counter() - started
        user = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before
        (scores,) = [path for path in Path(tmp, "cache").glob("*.json") if not path.name.endswith(".meta.json")]
        return wall, user, scores.read_bytes(), Path(tmp, "x.yaml").read_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--case", default="smollm2")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--note", default="")
    parser.add_argument("--append", action="store_true", help="append the block to benchmarks/RESULTS.md")
    args = parser.parse_args()

    model = HERE / ".cache" / args.case
    if not (model / "BENCHMARK_CHECKPOINT_COMPLETE.json").is_file():
        subprocess.run([sys.executable, str(HERE / "checkpoints.py"), args.case], check=True)
    for path in model.glob("*.safetensors"):
        path.read_bytes()  # warm page cache
    commits = {name: git("rev-parse", "--short", name) for name in (args.old, args.new)}
    runs: dict[str, list[tuple[float, float, bytes, bytes]]] = {name: [] for name in commits}
    with tempfile.TemporaryDirectory() as work:
        trees = {}
        for name, commit in commits.items():
            trees[name] = Path(work, commit)
            git("worktree", "add", "--detach", "--quiet", str(trees[name]), commit)
        try:
            load = os.getloadavg()
            for repeat in range(args.repeats):
                for name in commits:
                    runs[name].append(run_once(trees[name], model, args.threads))
                    print(f"  run {repeat + 1} {name:>12} wall {runs[name][-1][0]:7.2f} s  user {runs[name][-1][1]:6.1f} s",
                          flush=True)
            after = os.getloadavg()
        finally:
            for tree in trees.values():
                git("worktree", "remove", "--force", str(tree))
    medians = {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for name, rs in runs.items()}
    same = all(r[2:] == runs[args.old][0][2:] for rs in runs.values() for r in rs)
    old, new = medians[args.old], medians[args.new]
    lines = [
        f"## {args.case}: {args.old} ({commits[args.old]}) vs {args.new} ({commits[args.new]}) — "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {platform.processor() or platform.machine()}, nproc {os.cpu_count()}; Linux {platform.release()}",
        f"- load average (1/5/15 min) before {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, "
        f"after {after[0]:.2f}/{after[1]:.2f}/{after[2]:.2f}",
        f"- command: `python3 benchmarks/compare_commits.py {args.old} {args.new} --case {args.case} "
        f"--repeats {args.repeats} --threads {args.threads}`; each run `python3 -m spectrum --model benchmarks/.cache/"
        f"{args.case} --rescan --quiet --threads {args.threads} --top-percent 25`, alternating",
        *([f"- note: {args.note}"] if args.note else []),
        "",
        "| commit | wall s (median) | user CPU s (median) | runs (wall s) |",
        "|---|---:|---:|---|",
        *(f"| {name} ({commits[name]}) | {medians[name][0]:.2f} | {medians[name][1]:.1f} | "
          f"{', '.join(f'{r[0]:.2f}' for r in runs[name])} |" for name in commits),
        "",
        f"{args.new} vs {args.old}: wall {new[0] / old[0]:.2f}x, user CPU {new[1] / old[1]:.2f}x; "
        f"scores files and YAML byte-identical across all runs: {'yes' if same else 'NO'}.",
        "",
    ]
    block = "\n".join(lines)
    print(block)
    if args.append:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as handle:
            handle.write("\n" + block)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
