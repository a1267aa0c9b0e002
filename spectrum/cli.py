"""The `spectrum` command: scan a checkpoint (or reuse its cached scores) and write the modules to unfreeze."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
import traceback

from . import __version__
from .cache import DEFAULT_CACHE_DIR, atomic_write_text
from .distributed import World, leave
from .errors import SpectrumError, UsageError
from .naming import compile_type_patterns, type_matches
from .report import console, format_types, install_log_handler, print_summary, scan_progress
from .scan import default_type_filter, take_inventory
from .store import load_or_scan
from .trainer import checked_yaml
from .select import format_percent, parse_top_percent
from .sources import open_source

EXAMPLES = """examples:
  spectrum --model meta-llama/Meta-Llama-3-8B --top-percent 25
  spectrum --model ./my-model --top-percent 30 --output unfrozen.yaml
  spectrum --model ./my-model --list-types
  spectrum --model ./my-model --types 'mlp\\.' 'self_attn\\.' --top-percent 50 --output -
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage block
        raise UsageError(f"{message} (see spectrum --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spectrum",
        description="Score every weight matrix of a checkpoint by signal-to-noise ratio and write the "
        "top K%% per module type as an Axolotl `unfrozen_parameters:` list.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # What to scan
    parser.add_argument("--model", "--model-name", dest="model", required=True, metavar="MODEL",
                        help="local folder, .safetensors file, or Hub id org/name (--model-name is an alias)")
    parser.add_argument("--revision", help="Hub branch, tag or commit (Hub ids only)")
    parser.add_argument("--types", nargs="+", metavar="REGEX",
                        help="scan and select the module types matching any REGEX (re.search); "
                        "default: the types inside numbered layers")
    parser.add_argument("--list-types", action="store_true",
                        help="print the checkpoint's matrix types with counts and shapes (headers only) and exit")
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
    # Where results go
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR, metavar="DIR",
                        help="folder of the scores files (default: ./model_snr_results, where Axolotl looks)")
    parser.add_argument("--name", metavar="SLUG_SOURCE",
                        help="name the cache file after this instead of --model (e.g. the Hub id of a local copy)")
    parser.add_argument("--output", metavar="PATH",
                        help="YAML path; '-' prints only the YAML to stdout "
                        "(default: snr_results_<slug>_unfrozenparameters_<K>percent.yaml)")
    parser.add_argument("--rescan", action="store_true", help="ignore cached scores and scan again")
    # How to compute
    parser.add_argument("--method", default="auto", choices=("auto", "gram", "svd"),
                        help="singular values by float64 Gram eigenvalues or float32 SVD (default: auto)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="CPU workers, one single-threaded worker each (default: every core)")
    parser.add_argument("--keep-shards", action=argparse.BooleanOptionalAction, default=True,
                        help="keep Hub shards this scan downloads in the HF cache (--no-keep-shards deletes each "
                        "once scanned; shards that were already cached are never deleted)")
    # Output
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also SPECTRUM_DEBUG=1)")
    parser.add_argument("--version", action="version", version=f"spectrum {__version__}")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    top_percent = parse_top_percent(args.top_percent)
    patterns = None
    if args.types:
        try:
            patterns = compile_type_patterns(args.types)
        except re.error as err:
            raise UsageError(f"--types: {err.pattern!r} is not a valid regular expression ({err})") from err
    type_filter = (lambda type_name: type_matches(type_name, patterns)) if patterns else None

    if args.list_types:
        return list_types(args.model, args.revision)

    if args.output not in (None, "-"):
        target = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(target):
            raise UsageError(f"--output {args.output}: {target} is not an existing folder; create it or choose another path")
    with scan_progress(args.model, enabled=not args.quiet) as on_progress:
        outcome = load_or_scan(
            args.model,
            cache_dir=args.cache_dir,
            name=args.name,
            rescan=args.rescan,
            revision=args.revision,
            type_filter=type_filter,
            method=args.method,
            device=args.device,
            threads=args.threads,
            keep_shards=args.keep_shards,
            on_progress=on_progress,
        )
    scores, cache_file = outcome.scores, outcome.cache_file
    world = World.from_env()
    if not world.is_main:  # under torchrun, rank 0 writes everything
        leave(world)
        return 0

    selected_types = {t for t in scores.types() if type_matches(t, patterns)} if patterns else None
    yaml_text = checked_yaml(
        scores,
        top_percent,
        model=args.model,
        revision=args.revision,
        types=selected_types,
        embeddings=not args.no_embeddings,
        group_experts=args.group_experts,
        check=args.check,
    )
    percent_text = format_percent(top_percent)
    if args.output == "-":
        sys.stdout.write(yaml_text)
        sys.stdout.flush()
        yaml_file = "<stdout>"
    else:
        yaml_file = args.output or f"{os.path.basename(cache_file)[: -len('.json')]}_unfrozenparameters_{percent_text}percent.yaml"
        atomic_write_text(yaml_file, yaml_text)
    if not args.quiet:
        print_summary(
            scores,
            scores.by_type(selected_types, top_percent),
            top_percent=percent_text,
            scanned=outcome.scanned,
            seconds=time.perf_counter() - started,
            scores_file=cache_file,
            yaml_file=yaml_file,
        )
    leave(world)
    return 0


def list_types(model: str, revision: str | None) -> int:
    source = open_source(model, revision=revision)
    try:
        inventory = take_inventory(source.tensors())
    finally:
        source.close()
    defaults = {t for t in inventory.types() if default_type_filter(inventory)(t)}
    sys.stdout.write(format_types(inventory.types(), defaults))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("SPECTRUM_DEBUG") == "1"
    install_log_handler()
    try:
        args = build_parser().parse_args(argv)
        return run(args)
    except SpectrumError as err:
        return _fail(err, err.exit_code, debug)
    except KeyboardInterrupt:
        console.print("spectrum: interrupted; files already written are complete, nothing was half-written")
        return 130
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        return _fail(f"{where}{err.strerror or err}", 1, debug)
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        return _fail(f"unexpected {type(err).__name__}: {err} (rerun with --debug and report it)", 1, debug)


def _fail(message: object, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    console.print(f"spectrum: error: {message}", markup=False, highlight=False, soft_wrap=True)
    return code
