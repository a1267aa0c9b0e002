"""Benchmark `spectrum` against the reference approach (benchmarks/baseline.py) on one case.

    python3 benchmarks/run.py {smollm2,qwen05b,llama8b} [--repeats 3] [--threads N] [--skip-baseline]

Builds the case's checkpoint first if needed (benchmarks/checkpoints.py, not timed), reads its files
once so both tools start from a warm page cache, then alternates runs, spectrum first:

    spectrum --model DIR --rescan --quiet --cache-dir <tmp> --output <tmp>/x.yaml --threads N --top-percent 25
    python3 benchmarks/baseline.py DIR --threads N --out <tmp>/baseline.json

each as a child process (a fresh temporary folder per run). For each run it records the wall time
(from start to exit, imports included) and the child's own peak RSS (the VmHWM it prints at exit,
see _peak.py; os.wait4's ru_maxrss would include this parent's), and with CUDA the peak device memory the child reports (torch.cuda.max_memory_allocated).
It reports the medians, the ratios, whether the two tools agree (same matrices, max relative score
difference, same top-K% selection), checks the issue's targets, and appends a block to
benchmarks/RESULTS.md. spectrum is run through benchmarks/_spectrum_child.py, which calls the same
entry point as the `spectrum` console script with this interpreter and prints the CUDA peak.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import checkpoints  # noqa: E402  (benchmarks/checkpoints.py)
from _peak import PEAK_RSS_PREFIX  # noqa: E402

RESULTS = HERE / "RESULTS.md"
PEAK_CUDA_PREFIX = "BENCH_PEAK_CUDA_BYTES="
# The issue's targets, per case (2-core machine). Sizes in bytes; "GB" means 10**9 bytes.
TARGETS = {
    "smollm2": {"min_speedup": 3.0, "max_rss_ratio": 1 / 3},
    "llama8b": {"max_rss_bytes": 3 * 10**9, "max_wall_s": 9 * 60},
}
# The baseline holds the whole model in float32 (32 GB for Llama-3-8B): skipped below this much RAM.
BASELINE_MIN_RAM_BYTES = {"llama8b": 40 * 10**9}
HEADER = """# Benchmark results

Appended by `python3 benchmarks/run.py CASE`, one block per invocation, newest last. See
benchmarks/README.md for what is measured. Medians over the repeats; "peak RSS" is the child
process's own maximum resident set size; ratios are against the baseline (the reference approach:
whole model in float32 via transformers, torch.linalg.svdvals per matrix). Figures are only
comparable between blocks from the same machine; check the load average of each block.
"""


# ----------------------------------------------------------------------------------------------
# Measuring one child process
# ----------------------------------------------------------------------------------------------


def measure(cmd: list[str], *, cwd: Path, env: dict, timeout: float | None) -> dict:
    """Run `cmd`; wall time, the child's peak RSS (its own VmHWM line, else os.wait4's rusage) and its CUDA peak line."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        killer = threading.Timer(timeout, process.kill) if timeout else None
        if killer:
            killer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            if killer:
                killer.cancel()
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # Popen did not reap it itself
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
        out.seek(0)
        stdout = out.read().decode("utf-8", "replace")
    peak_cuda = None
    peak_rss = usage.ru_maxrss * 1024  # KiB on Linux; includes the parent's high-water mark (_peak.py)
    for line in stderr.splitlines():
        if line.startswith(PEAK_CUDA_PREFIX):
            peak_cuda = int(line[len(PEAK_CUDA_PREFIX):])
        elif line.startswith(PEAK_RSS_PREFIX):
            peak_rss = int(line[len(PEAK_RSS_PREFIX):])  # the child's own (VmHWM)
    return {
        "wall_s": wall,
        "rss_bytes": peak_rss,
        "peak_cuda_bytes": peak_cuda,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "rc": process.returncode,
        "timed_out": bool(timeout) and process.returncode == -9 and wall >= timeout,
        "stderr_tail": "\n".join(stderr.strip().splitlines()[-15:]),
        "stdout_tail": "\n".join(stdout.strip().splitlines()[-5:]),
    }


# ----------------------------------------------------------------------------------------------
# Scores, selection and agreement
# ----------------------------------------------------------------------------------------------


def fine_tune_of(folder: Path) -> Path:
    """A stand-in for a fine-tune of the checkpoint in `folder`: a folder beside it with the same
    weights (hard links) and its config.json under another `_name_or_path`, as a fine-tune's config
    differs from its base's. Made once."""
    tuned = folder.with_name(folder.name + "-finetune")
    if (tuned / "config.json").is_file():
        return tuned
    staging = folder.with_name(folder.name + "-finetune.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    for entry in folder.iterdir():
        if entry.is_file() and entry.name != "config.json":
            os.link(entry, staging / entry.name)
    config = json.loads((folder / "config.json").read_text())
    config["_name_or_path"] = f"benchmark/{folder.name}-finetune"
    (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    staging.rename(tuned)
    return tuned


def read_scores(path: Path) -> dict[str, tuple[float, str]]:
    data = json.loads(path.read_text())
    return {module: (float(entry["snr"]), entry["type"]) for module, entry in data.items()}


def spectrum_outputs(tmp: Path) -> tuple[dict, list[str]]:
    """spectrum's scores file (the one JSON in its cache dir that is not a .meta.json) and YAML list."""
    import yaml

    files = [p for p in (tmp / "cache").glob("snr_results_*.json") if not p.name.endswith(".meta.json")]
    if len(files) != 1:
        raise RuntimeError(f"expected one scores file in {tmp / 'cache'}, found {[p.name for p in files]}")
    selection = yaml.safe_load((tmp / "x.yaml").read_text())["unfrozen_parameters"]
    layered = [entry for entry in selection if not entry.startswith("^")]  # drop the embedding lines
    return read_scores(files[0]), layered


def select(scores: dict[str, tuple[float, str]], percent: float) -> set[str]:
    """Per type: sort by score descending (ties keep file order), keep floor(count * K / 100)."""
    by_type: dict[str, list[tuple[int, str, float]]] = {}
    for position, (module, (value, type_name)) in enumerate(scores.items()):
        by_type.setdefault(type_name, []).append((position, module, value))
    chosen = set()
    for entries in by_type.values():
        keep = math.floor(len(entries) * percent / 100 + 1e-9)
        entries.sort(key=lambda e: (-e[2], e[0]))
        chosen.update(module for _, module, _ in entries[:keep])
    return chosen


def compare(spectrum_scores: dict, spectrum_selection: list[str], baseline_scores: dict, percent: float) -> dict:
    common = sorted(set(spectrum_scores) & set(baseline_scores))
    worst, worst_module, diffs = 0.0, None, []
    for module in common:
        a, b = spectrum_scores[module][0], baseline_scores[module][0]
        if a == b:
            diff = 0.0
        elif math.isfinite(a) and math.isfinite(b):
            diff = abs(a - b) / max(abs(a), abs(b), 1e-300)
        else:
            diff = math.inf
        diffs.append(diff)
        if diff > worst or worst_module is None:
            worst, worst_module = diff, module
    own = set(spectrum_selection)
    from_baseline = select(baseline_scores, percent)
    from_spectrum_scores = select(spectrum_scores, percent)
    return {
        "matrices_spectrum": len(spectrum_scores),
        "matrices_baseline": len(baseline_scores),
        "same_matrices": set(spectrum_scores) == set(baseline_scores),
        "types_agree": all(spectrum_scores[m][1] == baseline_scores[m][1] for m in common),
        "max_rel_diff": worst,
        "max_rel_diff_module": worst_module,
        "median_rel_diff": statistics.median(diffs) if diffs else None,
        "selection_same": own == from_baseline,
        "selection_only_spectrum": sorted(own - from_baseline),
        "selection_only_baseline": sorted(from_baseline - own),
        "yaml_matches_own_scores": own == from_spectrum_scores,
        "selected": len(own),
    }


# ----------------------------------------------------------------------------------------------
# Machine description
# ----------------------------------------------------------------------------------------------


def _command_output(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def memory_bytes(key: str = "MemTotal") -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def machine() -> dict:
    model = ""
    for line in _command_output(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
            break
    import torch
    import transformers
    import safetensors

    try:
        from importlib.metadata import version

        spectrum_version = version("spectrum")
    except Exception:  # noqa: BLE001
        spectrum_version = "?"
    commit = _command_output(["git", "rev-parse", "--short", "HEAD"], REPO) or "?"
    dirty = bool(_command_output(["git", "status", "--porcelain", "--", "spectrum"], REPO))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": model or platform.processor() or "?",
        "nproc": _command_output(["nproc"]) or str(len(os.sched_getaffinity(0))),
        "ram_bytes": memory_bytes(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "spectrum": f"{spectrum_version} (git {commit}{', spectrum/ modified' if dirty else ''})",
        "kernel": platform.release(),
    }


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------


def warm_page_cache(folder: Path, files: list[str]) -> str:
    total = sum((folder / name).stat().st_size for name in files)
    available = memory_bytes("MemAvailable")
    if total > available // 2:
        return f"not warmed: {total / 1e9:.1f} GB of weights vs {available / 1e9:.1f} GB available memory"
    started = time.perf_counter()
    for name in files:
        with open(folder / name, "rb") as handle:
            while handle.read(64 << 20):
                pass
    return f"warmed: read {total / 1e9:.2f} GB once before timing ({time.perf_counter() - started:.1f} s)"


def fmt_mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def median_of(runs: list[dict], key: str):
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark spectrum against the reference approach.")
    parser.add_argument("case", choices=checkpoints.CASES)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each tool, alternating (default: 3)")
    parser.add_argument("--threads", type=int, help="CPU threads for both tools (default: every core)")
    parser.add_argument("--skip-baseline", action="store_true", help="time spectrum only")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when torch sees a GPU, else cpu (default: auto)")
    parser.add_argument("--top-percent", type=float, default=25.0, help="selection compared (default: 25)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before a run is killed (default: 3600)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file to append to")
    parser.add_argument("--no-record", action="store_true", help="print the block, do not append it")
    parser.add_argument("--spectrum-arg", action="append", default=[], metavar="ARG",
                        help="one more argument for spectrum, e.g. --spectrum-arg=--no-check (repeatable)")
    parser.add_argument("--fine-tune", action="store_true",
                        help="time spectrum's first scan of a fine-tune of the case's model (its config's "
                             "_name_or_path changed, weights linked) with the base model's name-check view "
                             "cached, as after scanning the base once")
    parser.add_argument("--note", help="a line to add to the block (e.g. 'busy machine, smoke test')")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU")
    threads = args.threads or len(os.sched_getaffinity(0))

    # The checkpoint, built in a child so this process stays small (not timed).
    folder = checkpoints.CACHE_DIR / args.case
    if not checkpoints.is_complete(folder, args.case):
        subprocess.run([sys.executable, str(HERE / "checkpoints.py"), args.case], check=True)
    info = json.loads((folder / checkpoints.MARKER).read_text())
    files = sorted(info["files"])

    host = machine()
    skip_reason = "--skip-baseline" if args.skip_baseline else None
    need = BASELINE_MIN_RAM_BYTES.get(args.case)
    if not skip_reason and need and host["ram_bytes"] < need:
        skip_reason = (f"skipped automatically: the baseline holds the whole model in float32 "
                       f"({2 * info['bytes'] / 1e9:.1f} GB for this case) and needs >= {need / 1e9:.0f} GB RAM; "
                       f"this machine has {host['ram_bytes'] / 1e9:.1f} GB")
    run_baseline = skip_reason is None

    warm = warm_page_cache(folder, files)
    load_before = os.getloadavg()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    percent_text = f"{args.top_percent:g}"
    device_args = ["--device", "cuda"] if device == "cuda" else []
    scanned, seeded_views = folder, None
    if args.fine_tune:
        scanned = fine_tune_of(folder)
        seeded_views = Path(tempfile.mkdtemp(prefix="spectrum-bench-views-"))
        subprocess.run([sys.executable, str(HERE / "_spectrum_child.py"), "--model", str(folder), "--quiet",
                        "--cache-dir", str(seeded_views / "scores"), "--output", str(seeded_views / "x.yaml")] + device_args,
                       env=dict(env, SPECTRUM_CACHE=str(seeded_views / "views")), check=True, stdout=subprocess.DEVNULL)
    spectrum_cmd = ["--model", str(scanned), "--rescan", "--quiet", "--cache-dir", "{tmp}/cache",
                    "--output", "{tmp}/x.yaml", "--threads", str(threads), "--top-percent", percent_text] + device_args + args.spectrum_arg
    baseline_cmd = [str(folder), "--threads", str(threads), "--out", "{tmp}/baseline.json"] + device_args
    tools = [("spectrum", [sys.executable, str(HERE / "_spectrum_child.py")] + spectrum_cmd)]
    if run_baseline:
        tools.append(("baseline", [sys.executable, str(HERE / "baseline.py")] + baseline_cmd))

    runs: list[dict] = []
    outputs: dict[str, list] = {"spectrum": [], "baseline": []}
    print(f"{args.case}: {len(files)} file(s), {info['bytes'] / 1e9:.2f} GB; device {device}, {threads} threads; {warm}",
          file=sys.stderr)
    for repeat in range(args.repeats):
        for tool, template in tools:
            tmp = Path(tempfile.mkdtemp(prefix=f"spectrum-bench-{tool}-"))
            try:
                cmd = [part.replace("{tmp}", str(tmp)) for part in template]
                # A cache of trainer views of its own per run: each run is a model's first scan (of a
                # fine-tune, with the base's view: a copy of that cache).
                if seeded_views is not None and tool == "spectrum":
                    shutil.copytree(seeded_views / "views", tmp / "views")
                result = measure(cmd, cwd=tmp, env=dict(env, SPECTRUM_CACHE=str(tmp / "views")), timeout=args.timeout)
                result.update({"tool": tool, "repeat": repeat + 1})
                runs.append(result)
                print(f"  run {repeat + 1} {tool:8s} wall {result['wall_s']:8.2f} s  peak RSS "
                      f"{fmt_mib(result['rss_bytes']):>7s} MiB  peak CUDA {fmt_mib(result['peak_cuda_bytes'])} MiB  "
                      f"rc {result['rc']}", file=sys.stderr, flush=True)
                if result["rc"] != 0:
                    print(f"{tool} failed (rc {result['rc']}{', timed out' if result['timed_out'] else ''}):\n"
                          f"{result['stderr_tail']}", file=sys.stderr)
                    return 1
                if tool == "spectrum":
                    outputs["spectrum"].append(spectrum_outputs(tmp))
                    metas = list((tmp / "cache").glob("snr_results_*.meta.json"))
                    result["compute_s"] = json.loads(metas[0].read_text())["seconds"] if len(metas) == 1 else None
                else:
                    outputs["baseline"].append(read_scores(tmp / "baseline.json"))
                    found = re.search(r"BASELINE .*\bsvd_s=([0-9.]+)", result["stderr_tail"])
                    result["compute_s"] = float(found.group(1)) if found else None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    if seeded_views is not None:
        shutil.rmtree(seeded_views, ignore_errors=True)

    spectrum_runs = [r for r in runs if r["tool"] == "spectrum"]
    baseline_runs = [r for r in runs if r["tool"] == "baseline"]
    med = {tool: {key: median_of(rs, key) for key in ("wall_s", "rss_bytes", "peak_cuda_bytes", "compute_s")}
           for tool, rs in (("spectrum", spectrum_runs), ("baseline", baseline_runs)) if rs}
    speedup = rss_ratio = cuda_ratio = None
    if "baseline" in med:
        speedup = med["baseline"]["wall_s"] / med["spectrum"]["wall_s"]
        rss_ratio = med["spectrum"]["rss_bytes"] / med["baseline"]["rss_bytes"]
        if med["spectrum"]["peak_cuda_bytes"] and med["baseline"]["peak_cuda_bytes"]:
            cuda_ratio = med["spectrum"]["peak_cuda_bytes"] / med["baseline"]["peak_cuda_bytes"]

    agreement = None
    if outputs["baseline"]:
        agreement = compare(*outputs["spectrum"][0], outputs["baseline"][0], args.top_percent)
    spectrum_stable = all(o[0] == outputs["spectrum"][0][0] for o in outputs["spectrum"])
    baseline_stable = all(o == outputs["baseline"][0] for o in outputs["baseline"]) if outputs["baseline"] else None

    checks = []
    target = TARGETS.get(args.case, {})
    if "min_speedup" in target:
        if speedup is None:
            checks.append("speed/RSS targets not checked: no baseline")
        else:
            checks.append(f"{'PASS' if speedup >= target['min_speedup'] else 'FAIL'}: "
                          f"{speedup:.2f}x faster than the baseline (target >= {target['min_speedup']:g}x)")
            checks.append(f"{'PASS' if rss_ratio <= target['max_rss_ratio'] else 'FAIL'}: "
                          f"peak RSS {rss_ratio:.3f} of the baseline's (target <= 1/3)")
    if "max_rss_bytes" in target:
        rss = med["spectrum"]["rss_bytes"]
        wall = med["spectrum"]["wall_s"]
        checks.append(f"{'PASS' if rss <= target['max_rss_bytes'] else 'FAIL'}: peak RSS {rss / 1e9:.2f} GB "
                      f"(target <= {target['max_rss_bytes'] / 1e9:g} GB)")
        checks.append(f"{'PASS' if wall <= target['max_wall_s'] else 'FAIL'}: wall {wall:.1f} s "
                      f"(target <= {target['max_wall_s']} s)")
    if agreement:
        ok = agreement["same_matrices"] and agreement["selection_same"] and agreement["max_rel_diff"] <= 1e-4
        checks.append(f"{'PASS' if ok else 'CHECK'}: scores agree with the baseline "
                      f"(max relative difference {agreement['max_rel_diff']:.2e}, same top-{percent_text}% "
                      f"selection: {'yes' if agreement['selection_same'] else 'no'})")

    # The block for RESULTS.md
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    def shown(cmd: list[str]) -> str:
        text = " ".join(shlex.quote(part) for part in cmd).replace(str(REPO) + "/", "")
        return re.sub(r"'\{tmp\}([^']*)'", r"<tmp>\1", text)

    lines = [
        f"## {args.case} — {now}",
        "",
        f"- machine: {host['cpu']}, nproc {host['nproc']}, {host['ram_bytes'] / 2**30:.1f} GiB RAM"
        + (f", GPU {host['gpu']}" if host["gpu"] else ", no GPU") + f"; Linux {host['kernel']}",
        f"- load average (1/5/15 min) before {'/'.join(f'{v:.2f}' for v in load_before)}, "
        f"after {'/'.join(f'{v:.2f}' for v in load_after)}",
        f"- python {host['python']}, torch {host['torch']}, transformers {host['transformers']}, "
        f"safetensors {host['safetensors']}, spectrum {host['spectrum']}",
        f"- command: `{shown([Path(sys.executable).name] + [str(Path(sys.argv[0]).resolve())] + sys.argv[1:])}`",
        f"- checkpoint: `{shown([str(folder)])}`: {len(files)} file(s), {info['bytes'] / 1e9:.3f} GB bf16, "
        f"{info['parameters'] / 1e6:,.1f} M parameters; page cache {warm}",
        f"- device {device}, {threads} threads, {args.repeats} repeat(s), alternating spectrum/baseline",
        *([f"- fine-tune: spectrum scans `{shown([str(scanned)])}` (the same weights, linked; config.json's "
           f"_name_or_path changed) with the base model's name-check view cached"] if args.fine_tune else []),
        f"- spectrum: `spectrum {shown(spectrum_cmd)}` (via benchmarks/_spectrum_child.py)",
        f"- baseline: `python3 benchmarks/baseline.py {shown(baseline_cmd)}`"
        + ("" if run_baseline else f" — not run: {skip_reason}"),
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "| tool | wall s (median) | peak RSS MiB (median) | peak device MiB (median) |", "|---|---:|---:|---:|"]
    for tool, values in med.items():
        lines.append(f"| {tool} | {values['wall_s']:.2f} | {fmt_mib(values['rss_bytes'])} | "
                     f"{fmt_mib(values['peak_cuda_bytes'])} |")
    if speedup is not None:
        lines.append(f"| spectrum vs baseline | {speedup:.2f}x faster | {rss_ratio:.3f}x the RSS | "
                     f"{'-' if cuda_ratio is None else f'{cuda_ratio:.3f}x'} |")
    lines.append("")
    if med.get("spectrum", {}).get("compute_s") is not None:
        text = (f"Compute alone (median; imports, model loading and writing files left out): spectrum's scan "
                f"{med['spectrum']['compute_s']:.2f} s (its sidecar's `seconds`, reading included)")
        if med.get("baseline", {}).get("compute_s"):
            text += (f", the baseline's svdvals loop {med['baseline']['compute_s']:.2f} s (its `svd_s`, model already "
                     f"in memory): {med['baseline']['compute_s'] / med['spectrum']['compute_s']:.2f}x")
        lines += [text + ".", ""]
    if agreement:
        lines.append(
            f"Scores: {agreement['matrices_spectrum']} matrices (baseline {agreement['matrices_baseline']}), same set: "
            f"{'yes' if agreement['same_matrices'] else 'NO'}, same types: {'yes' if agreement['types_agree'] else 'NO'}; "
            f"relative difference max {agreement['max_rel_diff']:.2e} ({agreement['max_rel_diff_module']}), "
            f"median {agreement['median_rel_diff']:.2e}; top-{percent_text}% selection ({agreement['selected']} modules) "
            f"identical: {'yes' if agreement['selection_same'] else 'NO'}"
            + ("" if agreement["selection_same"] else
               f" (only spectrum: {agreement['selection_only_spectrum']}, only baseline: {agreement['selection_only_baseline']})")
            + f"; spectrum's YAML matches its own scores: {'yes' if agreement['yaml_matches_own_scores'] else 'NO'}.")
    lines.append(f"Repeat runs gave identical scores: spectrum {'yes' if spectrum_stable else 'NO'}"
                 + ("" if baseline_stable is None else f", baseline {'yes' if baseline_stable else 'NO'}") + ".")
    if checks:
        lines += ["", "Targets:"] + [f"- {check}" for check in checks]
    lines += ["", "Raw runs:", "", "| # | tool | wall s | compute s | peak RSS MiB | peak device MiB | user s | sys s |",
              "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        compute = "-" if run.get("compute_s") is None else f"{run['compute_s']:.2f}"
        lines.append(f"| {run['repeat']} | {run['tool']} | {run['wall_s']:.2f} | {compute} | {fmt_mib(run['rss_bytes'])} | "
                     f"{fmt_mib(run['peak_cuda_bytes'])} | {run['user_s']:.1f} | {run['sys_s']:.1f} |")
    block = "\n".join(lines) + "\n"

    print(block)
    if not args.no_record:
        if not args.results.exists():
            args.results.write_text(HEADER)
        with open(args.results, "a") as handle:
            handle.write("\n" + block)
        print(f"appended to {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
