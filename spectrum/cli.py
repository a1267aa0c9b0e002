"""The `spectrum` command: scan a checkpoint (or reuse its cached scores) and write the modules to unfreeze."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import traceback
from dataclasses import replace
from fractions import Fraction

from . import workflow
from ._version import __version__
from .cache.entry import DEFAULT_CACHE_DIR, CacheEntry
from .cache.scores_file import output_target, overlong_name
from .cache.staleness import check_entry_names
from .errors import SpectrumError, UsageError
from .naming import printable, shown, type_matches
from .report.terminal import (
    ask,
    console,
    format_types,
    install_log_handler,
    print_line,
    print_status,
    print_summary,
    scan_progress,
)
from .scores import DEFAULT_THRESHOLD, THRESHOLDS
from .scoring.distributed import World, leave
from .scoring.inventory import default_type_filter
from .selection.topk import format_percent, parse_top_percent
from .sources.resolve import check_revision, looks_like_hub_id

LOG = logging.getLogger("spectrum")

EXAMPLES = """examples:
  spectrum --model meta-llama/Meta-Llama-3-8B --top-percent 25
  spectrum --model ./my-model --top-percent 30 --output unfrozen.yaml
  spectrum --model ./my-model --list-types
  spectrum --model ./my-model --types 'mlp\\.' 'self_attn\\.' --top-percent 50 --output -
  spectrum --model Qwen/Qwen2.5-0.5B --model meta-llama/Llama-3.2-1B --top-percent 25 --json
  spectrum --models-from models.txt --top-percent 25 --quiet
  spectrum report meta-llama/Meta-Llama-3-8B --top-percent 25     (heatmap PNG + HTML from the cache)
"""

REPORT_EXAMPLES = """examples:
  spectrum report meta-llama/Meta-Llama-3-8B --top-percent 25
  spectrum report model_snr_results/snr_results_org-name.json --png scan.png --html scan.html
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage block
        raise UsageError(f"{message} (see {self.prog} --help)")

    def _print_message(self, message: str, file=None) -> None:  # --help and --version: a full disk is an error
        if not message:
            return
        if file is None or file is sys.stdout:
            _write_stdout_utf8(message)
            return
        try:
            file.write(message)
            file.flush()
        except OSError:
            pass  # stderr: nowhere left to say it


class _MainParser(_Parser):
    def parse_args(self, args=None, namespace=None):  # noqa: ANN001 - argparse's signature
        """As argparse's, but one stray word without --model is taken for a model: suggest --model WORD."""
        parsed, extras = self.parse_known_args(args, namespace)
        if len(extras) == 1 and not extras[0].startswith("-") and not parsed.model:
            self.error(f"unrecognized arguments: {extras[0]}; did you mean --model {extras[0]}?")
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def _add_cache_dir(parser: argparse.ArgumentParser, where: str = "") -> None:
    """--cache-dir, in the commands that read or write the cache (added in place, not from a parent
    parser, so that each help lists it where it always has)."""
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, metavar="DIR",
                        help=f"folder of the scores files (default: ./model_snr_results{where})")


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """--debug, in every command."""
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also SPECTRUM_DEBUG=1)")


# Usage lines (argparse %-formats usage, not the raw description): the scan and the subcommand.
USAGE = ("%(prog)s --model MODEL [options]\n       %(prog)s report MODEL [options]\n"
         "       %(prog)s verify CONFIG.yml | --model MODEL FILE.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = _MainParser(
        prog="spectrum",
        usage=USAGE,
        description="Score every weight matrix of a checkpoint by signal-to-noise ratio and write the "
        "top K% per module type as an Axolotl `unfrozen_parameters:` list.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # What to scan
    parser.add_argument("--model", "--model-name", dest="model", action="append", metavar="MODEL",
                        help="local folder, .safetensors, .gguf or .bin file, or Hub id org/name (--model-name is an alias); "
                        "repeat for several models")
    parser.add_argument("--models-from", metavar="FILE",
                        help="read more models from FILE, one a line ('#' comments and blank lines skipped; - is stdin)")
    parser.add_argument("--revision", help="Hub branch, tag or commit (Hub ids only)")
    parser.add_argument("--types", nargs="+", metavar="REGEX",
                        help="scan and select the module types matching any REGEX (re.search); "
                        "default: the types inside numbered layers")
    parser.add_argument("--list-types", action="store_true",
                        help="print the checkpoint's matrix types with counts and shapes (headers only) and exit")
    parser.add_argument("--interactive", action="store_true",
                        help="pick the module types from a checklist (needs a terminal; otherwise the flags apply)")
    # What to select
    parser.add_argument("--top-percent", default="50", metavar="K",
                        help="keep the top K%% of each type, 0 < K <= 100, decimals allowed (default: 50)")
    parser.add_argument("--group-experts", action="store_true",
                        help="rank all experts of one MoE projection together (default: each expert index is a type)")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=None,
                        help="build the model on the meta device from config.json and verify every YAML entry matches "
                        "a parameter, writing the names transformers uses (default: when config.json is usable)")
    parser.add_argument("--no-embeddings", action="store_true",
                        help="leave the input-embedding and output-head lines out of the YAML")
    parser.add_argument("--lora", action="store_true",
                        help="write LoRA/QLoRA targets instead: Axolotl's lora_target_modules (and "
                        "lora_target_parameters for fused MoE experts), in snr_results_<slug>_lora_<K>percent.yaml")
    parser.add_argument("--lr-groups", type=float, metavar="LR",
                        help="experimental: also write Axolotl's lr_groups (base learning rate LR, the best module of "
                        "each type at LR * --lr-boost) in snr_results_<slug>_lrgroups_<K>percent.yaml")
    parser.add_argument("--lr-boost", type=float, default=2.0, metavar="B",
                        help="with --lr-groups: the factor of each type's best module (default: 2.0)")
    parser.add_argument("--format", choices=("yaml", "regex"), default="yaml",
                        help="yaml (default), or regex: the selection as one anchored regular expression "
                        "(parameter names; with --lora, module names for PEFT's string target_modules)")
    # Where results go
    _add_cache_dir(parser, ", where Axolotl looks")
    parser.add_argument("--name", metavar="SLUG_SOURCE",
                        help="name the cache file after this instead of --model (e.g. the Hub id of a local copy)")
    parser.add_argument("--output", metavar="PATH",
                        help="YAML path; '-' prints only the YAML to stdout "
                        "(default: snr_results_<slug>_unfrozenparameters_<K>percent.yaml)")
    parser.add_argument("--rescan", action="store_true", help="ignore cached scores and scan again")
    # How to compute
    parser.add_argument("--threshold", default=DEFAULT_THRESHOLD, choices=THRESHOLDS,
                        help="signal/noise split of the singular values: the reference's Marchenko-Pastur edge "
                        "(default) or Gavish-Donoho's optimal hard threshold (a departure from the reference)")
    parser.add_argument("--method", default="auto", choices=("auto", "gram", "svd"),
                        help="singular values by float64 Gram eigenvalues or a float64 SVD of the tall orientation; both "
                        "exact (default: auto, which is gram)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="CPU workers, one single-threaded worker each (default: every core)")
    parser.add_argument("--keep-shards", action=argparse.BooleanOptionalAction, default=True,
                        help="keep Hub shards this scan downloads in the HF cache (--no-keep-shards deletes each "
                        "once scanned; shards that were already cached are never deleted)")
    # Output
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary (failures still show)")
    parser.add_argument("--json", action="store_true",
                        help="print a machine-readable summary on stdout, one JSON object a line per model")
    _add_debug(parser)
    parser.add_argument("--version", action="version", version=f"spectrum {__version__}")
    return parser


def _positive_int(text: str) -> int:
    """A count written as plain digits (not `1e3`, `1_000`, ` 8` or digits of other scripts), at least 1."""
    try:
        value = int(text) if text.isascii() and text.isdigit() else 0
    except ValueError:  # more digits than Python converts
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    top_percent = parse_top_percent(args.top_percent)
    patterns = workflow.type_patterns(args.types)
    models = _models(args)
    _check_flags(args, models)
    if args.list_types:
        return list_types(models[0], args.revision)
    if args.output not in (None, "-"):
        _check_output(args.output)
    _check_names(args, models, top_percent)
    interactive = args.interactive and sys.stdin is not None and sys.stdin.isatty()
    if args.interactive and not interactive:
        LOG.warning("--interactive needs a terminal on stdin; going on with the flags")

    several = len(models) > 1
    failed: list[str] = []
    for position, model in enumerate(models, start=1):
        try:
            record = run_model(args, model, top_percent, patterns, interactive=interactive, first=position == 1)
        except (BrokenPipeError, _StdoutUnwritable):
            raise  # the reader of stdout is gone (`| head`), or stdout is closed or full: stop, as other tools do
        except Exception as err:  # noqa: BLE001 - with several models, even a bug only fails its own model
            message = _message(err)
            if args.json:
                _print_json({"model": model, "ok": False, "error": message})
            if isinstance(err, UsageError) or not several:
                raise
            if _debugging(args.debug) and not isinstance(err, (SpectrumError, OSError)):
                traceback.print_exc()
            failed.append(model)
            print_status(position, len(models), model, message.removeprefix(f"{model}: "), ok=False)
            continue
        if record is None:  # a torchrun rank other than 0: rank 0 reports
            continue
        if several and not args.quiet:
            how = "scanned" if record["scanned"] else "cached"
            units = "tensors" if "scored_matrices" in record else "matrices"  # a fused expert tensor counts once
            print_status(position, len(models), model, f"{how}, {record['selected']} of {record['matrices']} "
                         f"{units} selected -> {record['yaml_file']}", ok=True)
    world = World.from_env()
    if several and world.is_main and (failed or not args.quiet):
        done = len(models) - len(failed)
        print_line(f"{done} of {len(models)} models done" + (f"; failed: {', '.join(failed)}" if failed else ""))
    leave(world)  # under torchrun, once every model is done
    return 1 if failed else 0


def run_model(
    args: argparse.Namespace,
    model: str,
    top_percent: Fraction,
    patterns: list[re.Pattern[str]] | None,
    *,
    interactive: bool,
    first: bool,
) -> dict | None:
    """One model through the workflow, then what it printed: the selection on stdout with --output -,
    the summary or the JSON record. Returns the record (None off rank 0)."""
    options = scan_options(args, model, top_percent)
    if interactive:
        chosen = choose_types_for(model, args.revision, patterns)
        options = replace(options, type_filter=chosen.__contains__)
    with scan_progress(model, enabled=not args.quiet) as on_progress:
        result = workflow.run(options, on_progress=on_progress)
    if result is None:  # a torchrun rank other than 0: rank 0 reports
        return None
    if result.selection_file is None:
        _write_stdout_utf8(result.text if first or options.regex else "---\n" + result.text)
    if workflow.local_path_named(result) and not args.quiet and not getattr(args, "named_hint_given", False):
        args.named_hint_given = True  # once a run; after the YAML: a failed run says one line
        LOG.warning("%s is named after the local path %s; for a copy of a Hub model, --name ORG/NAME names it "
                    "after the Hub id, which Axolotl's Spectrum plugin looks for (README: Axolotl)",
                    os.path.basename(result.cache_file), model)
    record = result.record()
    if args.json:
        _print_json(record)
    elif not args.quiet:
        print_summary(args.name or model, result.summaries, top_percent=options.percent_text, scanned=result.scanned,
                      seconds=result.seconds, scores_file=result.cache_file, yaml_file=record["yaml_file"])
    return record


def scan_options(args: argparse.Namespace, model: str, top_percent: Fraction) -> workflow.ScanOptions:
    """The scan command's flags for one model, as the workflow takes them."""
    return workflow.ScanOptions(
        model, revision=args.revision, types=tuple(args.types or ()), method=args.method, device=args.device,
        threads=args.threads, keep_shards=args.keep_shards, threshold=args.threshold, cache_dir=args.cache_dir,
        name=args.name, rescan=args.rescan, top_percent=top_percent, group_experts=args.group_experts,
        embeddings=not args.no_embeddings, check=args.check, lora=args.lora, regex=args.format == "regex",
        output=args.output, lr_groups=args.lr_groups, lr_boost=args.lr_boost,
    )


def _check_output(output: str) -> None:
    """--output PATH can be written: a device, a FIFO or `/dev/stdout` is written through (its folder need not
    be writable); a file (or, for a link, the file it points to) is replaced, in a folder that must exist."""
    if os.path.isdir(output) or output.endswith((os.sep, "/")):
        raise UsageError(f"--output {output} is a folder; give a file path (e.g. {os.path.join(output, 'unfrozen.yaml')})")
    try:
        through, target = output_target(output)
    except SpectrumError as err:
        raise UsageError(f"--output {err}") from err
    if through:
        if not os.access(target, os.W_OK):
            raise UsageError(f"--output {output}: it is not writable; choose another path")
        return
    folder = os.path.dirname(os.path.abspath(target))
    shown_target = output if target == output else f"{output} (a link to {target})"
    if not os.path.isdir(folder):
        raise UsageError(f"--output {shown_target}: {folder} is not an existing folder; create it or choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--output {shown_target}: {folder} is not writable; choose another path")
    too_long = overlong_name(target, temporary=False)
    if too_long:
        raise UsageError(f"--output {shown(output)}: its file name is {too_long[0]} bytes, more than the {too_long[1]} "
                         "a file name may have there; choose a shorter one")


def _check_names(args: argparse.Namespace, models: list[str], top_percent: Fraction) -> None:
    """Before any work: each model's cache file names, and the default YAML name, fit their folders.
    A model that is neither a path nor a Hub id is left to fail on its own, as no such model."""
    for model in models:
        if not (os.path.exists(os.path.expanduser(model)) or looks_like_hub_id(model)):
            continue
        entry = CacheEntry.of(args.cache_dir, args.name or model)
        check_entry_names(entry.scores, named=args.name is not None)
        if args.output is not None:
            continue
        percent_text = format_percent(top_percent)
        yaml_name = entry.selection_file(percent_text)
        too_long = overlong_name(yaml_name, temporary=False)
        if too_long:
            fix = ("a --top-percent with fewer digits" if len(percent_text) > 20 else
                   "a shorter --name" if args.name else "a short name for the files with --name SHORT")
            raise UsageError(f"the YAML's file name {shown(yaml_name)} would be {too_long[0]} bytes, more than the "
                             f"{too_long[1]} a file name may have here; give --output a shorter path, or {fix}")


def _models(args: argparse.Namespace) -> list[str]:
    """--model values, then the lines of --models-from, in order."""
    models = list(args.model or [])
    if args.interactive and args.models_from == "-" and sys.stdin is not None and sys.stdin.isatty():
        raise UsageError("--interactive reads answers from the terminal, so --models-from cannot be - with it")
    if args.models_from:
        try:
            if args.models_from == "-":
                if sys.stdin is None:
                    raise OSError(0, "standard input is closed")
                lines = sys.stdin.read().removeprefix("\ufeff").splitlines()
            else:
                with open(args.models_from, encoding="utf-8-sig") as handle:  # a BOM (Windows editors) is not a name
                    lines = handle.read().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or str(err)
            raise UsageError(f"--models-from {args.models_from}: cannot read it ({reason})") from err
        for number, line in enumerate(lines, start=1):
            if "\0" in line:  # no path or Hub id holds one; open() would fail on it halfway through the run
                raise UsageError(f"--models-from {args.models_from}: line {number} holds a NUL byte, which no model "
                                 "path or Hub id can; fix the file (is it a text file?)")
        models += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not models:
            raise UsageError(f"--models-from {args.models_from}: no model in it (one a line)")
    if not models:
        raise UsageError("the following arguments are required: --model (or --models-from FILE)")
    return models


def _check_flags(args: argparse.Namespace, models: list[str]) -> None:
    """Flag combinations that cannot work, named with the fix."""
    if sys.stdout is None and (args.output == "-" or args.json or args.list_types):
        raise _StdoutUnwritable("it is closed")  # `>&-`: said before any work, not after the scan
    if args.json and args.output == "-":
        raise UsageError("--json and --output - both write to stdout; give --output a file path, or drop --json")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        raise UsageError(f"--device {args.device!r} is not a device; use auto, cpu, cuda or cuda:N")
    if args.lr_groups is not None:
        from .selection.lr_groups import check_lr

        check_lr(args.lr_groups, args.lr_boost)
    if len(models) == 1:
        check_revision(models[0], args.revision)
    if len(models) > 1:
        for flag, value in (("--name", args.name), ("--revision", args.revision), ("--list-types", args.list_types)):
            if value:
                raise UsageError(f"{flag} applies to one model; run each model on its own to use it")
        if args.output not in (None, "-"):
            raise UsageError("--output PATH with several models would write each over the last; "
                             "leave it out (one file per model) or use --output -")


def choose_types_for(model: str, revision: str | None, patterns: list[re.Pattern[str]] | None) -> set[str]:
    """The checklist for one model, from its headers; the flags' choice starts checked."""
    from .report.checklist import choose_types

    inventory = workflow.checkpoint_types(model, revision)
    types = inventory.types()
    if not types:  # the scan would say it; the checklist would have nothing to show
        raise SpectrumError(f"{model} holds no weight matrix to score; run with --list-types to see what it holds")
    default = default_type_filter(inventory)
    checked = {t for t in types if (type_matches(t, patterns) if patterns else default(t))}
    return choose_types(model, types, checked, ask=ask, say=print_line)


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and not isinstance(err, SpectrumError):
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror or err}"
    if not isinstance(err, SpectrumError):
        return _unexpected(err)
    return str(err)


def _unexpected(err: BaseException) -> str:
    """The line for an exception no code path expects: a bug to report."""
    return f"unexpected {type(err).__name__}: {err} (rerun with --debug and report it)"


def _print_json(record: dict) -> None:
    """One line of standard JSON: a non-finite number (an Infinity score) is null, which every parser reads."""
    _write_stdout_utf8(json.dumps(_finite_or_null(record), allow_nan=False) + "\n")


def _finite_or_null(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


def build_report_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spectrum report",
        description="Draw a model's cached scores: a heatmap PNG (layers down, module types across, colour = score, "
        "selected cells marked) and a self-contained HTML page with per-type tables. Reads no weights; needs "
        "matplotlib (pip install 'spectrum-snr[plot]', or pip install -e '.[plot]' in a checkout).",
        epilog=REPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL",
                        help="the model id or path (or --name) it was scanned under, or a scores file")
    parser.add_argument("--top-percent", default="50", metavar="K",
                        help="mark the top K%% of each type, 0 < K <= 100 (default: 50)")
    parser.add_argument("--types", nargs="+", metavar="REGEX", help="only the module types matching any REGEX")
    _add_cache_dir(parser)
    parser.add_argument("--png", metavar="PATH", help="heatmap path (default: snr_results_<slug>_<K>percent.png)")
    parser.add_argument("--html", metavar="PATH", help="HTML path (default: snr_results_<slug>_<K>percent.html)")
    parser.add_argument("--no-html", action="store_true", help="write the heatmap only")
    parser.add_argument("--quiet", action="store_true", help="do not print where the files are")
    _add_debug(parser)
    return parser


def run_report(args: argparse.Namespace) -> int:
    """`spectrum report MODEL`: the heatmap and the HTML page, from the cache alone."""
    from .report.html import write_report
    from .report.heatmap import require_matplotlib
    from .cache.lookup import load_scores

    top_percent = parse_top_percent(args.top_percent)
    patterns = workflow.type_patterns(args.types)
    if args.no_html and args.html:
        raise UsageError("--html and --no-html contradict each other; keep one")
    for flag, path in (("--png", args.png), ("--html", args.html)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise UsageError(f"{flag} {path}: its folder does not exist; create it or choose another path")
    require_matplotlib()
    scores = load_scores(args.model, cache_dir=args.cache_dir)
    # The types a scan run selects (without --types, the layered ones, as its summary counts them).
    types = {t for t in scores.types() if type_matches(t, patterns)} if patterns else workflow.default_types_of(scores)
    if patterns and types == set():
        raise UsageError(f"--types matches none of the scored types ({', '.join(scores.types())})")
    is_file = args.model.endswith(".json") and os.path.isfile(args.model)
    entry = CacheEntry(args.model) if is_file else CacheEntry.of(args.cache_dir, args.model)
    png_default, html_default = entry.report_files(format_percent(top_percent))
    outputs = [("--png", args.png or png_default)] + ([] if args.no_html else [("--html", args.html or html_default)])
    for flag, path in outputs:  # before drawing: a --top-percent of 400 digits makes a name no folder takes
        too_long = overlong_name(path, temporary=False)
        if too_long:
            raise UsageError(f"{flag} {shown(path)}: the file name would be {too_long[0]} bytes, more than the "
                             f"{too_long[1]} a file name may have there; give {flag} a shorter path")
    files = write_report(
        scores, top_percent, png_path=args.png or png_default,
        html_path=None if args.no_html else (args.html or html_default), types=types,
    )
    if not args.quiet:
        print_line(f"heatmap: {files.png}")
        if files.html:
            print_line(f"report:  {files.html}")
    return 0


VERIFY_EXAMPLES = """examples:
  spectrum verify config.yml                  (an Axolotl config, from the folder you train in)
  spectrum verify --model ./my-model snr_results_org-name_unfrozenparameters_25percent.yaml
exit codes: 0 the config trains what it says, 1 it does not (one line per problem), 2 usage error
"""


def build_verify_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spectrum verify",
        description="Check an Axolotl config before training: build its base_model on the meta device (no weights) "
        "and report each unfrozen_parameters entry, Spectrum plugin input and LoRA target that would make it train "
        "something other than it says; then what will train.",
        epilog=VERIFY_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", metavar="CONFIG", help="an Axolotl config, or a YAML spectrum wrote (with --model)")
    parser.add_argument("--model", metavar="MODEL",
                        help="the model to check against (a folder with config.json, or a cached Hub id) instead of "
                        "the config's base_model")
    _add_debug(parser)
    return parser


def run_verify(args: argparse.Namespace) -> int:
    """`spectrum verify CONFIG`: one line per problem on stdout, then what will train; 1 when there is a problem."""
    verdict = workflow.verify_config(args.config, model=args.model)
    lines = [f"problem: {problem}" for problem in verdict.problems] + [f"trains: {verdict.trains}"]
    if verdict.problems:
        count = len(verdict.problems)
        lines.append(f"{args.config}: {count} problem{'s' if count > 1 else ''}: it does not train what it says")
    else:
        lines.append(f"{args.config}: ok")
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()
    return 1 if verdict.problems else 0


def list_types(model: str, revision: str | None) -> int:
    inventory = workflow.checkpoint_types(model, revision)
    defaults = {t for t in inventory.types() if default_type_filter(inventory)(t)}
    _write_stdout_utf8(format_types(inventory.types(), defaults))
    return 0


# The commands: the word that names each, its parser and what runs it. The scan is also the default.
COMMANDS = {
    "scan": (build_parser, run),
    "report": (build_report_parser, run_report),
    "verify": (build_verify_parser, run_verify),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = _debugging("--debug" in argv)
    try:
        _text_streams_never_fail()
        install_log_handler()
        build, command = COMMANDS["scan"]
        words = [word for word in argv if word != "--debug"]  # `spectrum --debug report ...` is the report too
        if words[:1] and words[0] in COMMANDS:  # `spectrum --model M` is the scan, as `spectrum scan --model M`
            at = argv.index(words[0])
            build, command = COMMANDS[words[0]]
            argv = argv[:at] + argv[at + 1:]
        return command(build().parse_args(argv))
    except SpectrumError as err:
        return _fail(err, err.exit_code, debug)
    except BrokenPipeError:  # stdout's reader closed it (`spectrum ... --json | head -1`): stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a pipeline's writer
    except KeyboardInterrupt as err:  # a ScanInterrupted says what is saved for the next run
        detail = str(err) or "files already written are complete, nothing was half-written"
        try:
            console.print(f"spectrum: interrupted; {printable(detail)}", markup=False, highlight=False, soft_wrap=True)
        except (OSError, ValueError, KeyboardInterrupt):
            pass  # stderr is gone, or a second Ctrl-C: the exit code says it
        return 130
    except MemoryError as err:
        return _fail("out of memory" + (f" ({err})" if str(err) else "") + "; close other programs, or scan with "
                     "--threads 1 (one matrix in memory at a time)", 1, debug)
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        return _fail(f"{where}{err.strerror or err}", 1, debug)
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        return _fail(_unexpected(err), 1, debug)


def _debugging(flag: bool) -> bool:
    """Tracebacks wanted: --debug, or SPECTRUM_DEBUG=1."""
    return flag or os.environ.get("SPECTRUM_DEBUG") == "1"


def _fail(message: object, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    try:
        console.print(f"spectrum: error: {printable(str(message))}", markup=False, highlight=False, soft_wrap=True)
    except (OSError, ValueError):
        pass  # stderr is closed too: the exit code is all that can be said
    return code


class _StdoutUnwritable(SpectrumError):
    """Raised when standard output is closed or cannot take the text (a full device)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot write to standard output ({reason})")
        self.reason = reason


def _text_streams_never_fail() -> None:
    """Messages reach stderr whatever its encoding (a name it cannot encode is escaped, not an error),
    and a closed stdout (`>&-`) is an error only for what is written to it."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (OSError, ValueError):
                pass


def _write_stdout_utf8(text: str) -> None:
    """Data for stdout (the YAML) as UTF-8, whatever the locale says: its names must stay the names."""
    if sys.stdout is None:
        raise _StdoutUnwritable("it is closed")
    try:
        sys.stdout.flush()
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:
            sys.stdout.write(text)
        else:
            buffer.write(text.encode("utf-8", "surrogateescape"))
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as err:
        raise _StdoutUnwritable(err.strerror or str(err)) from err
