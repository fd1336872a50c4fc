"""Command-line pieces shared by the data preparation scripts in scripts/ (shard options, summaries)."""
import argparse
import os
import sys
from typing import Callable, Sequence

from training_ext.prep.shard_writer import PackResult, pack_shards, skipped_path, stats_path
from training_ext.prep.sources import MISSING_POLICIES, Sample


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in logs)")


def add_missing_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--missing", choices=MISSING_POLICIES, default="drop",
                        help="what to do with rows whose image does not exist or is not an image (its first "
                             "bytes are neither a common image format's nor a file PIL can open, e.g. an HTML "
                             "page saved as .jpg): drop them from the output, keep them, or stop with an error. "
                             "Such images are always counted and listed in files (default: drop)")


def add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples-per-shard", type=int, default=10000,
                        help="input samples per .tar shard (default 10000); open_clip_train needs at least "
                             "workers x GPUs shards")
    parser.add_argument("--overwrite", action="store_true",
                        help="rewrite every shard instead of resuming an earlier, interrupted run")
    parser.add_argument("--verify-images", action="store_true",
                        help="decode every image fully while packing (slower; catches truncated files)")


def pack_from_args(samples: Sequence[Sample], out_dir: str, prefix: str, args: argparse.Namespace) -> PackResult:
    result = pack_shards(samples, out_dir, prefix, samples_per_shard=args.samples_per_shard,
                         overwrite=args.overwrite, verify_images=args.verify_images,
                         progress=not args.no_progress)
    print_pack_summary(result)
    return result


def print_pack_summary(result: PackResult) -> None:
    shards = os.path.join(os.path.abspath(result.out_dir), result.pattern)
    print(f"{result.total_samples} samples in {result.num_shards} shards: {shards}"
          f" ({result.reused_shards} kept from an earlier run); counts in "
          f"{os.path.join(result.out_dir, 'sizes.json')} and {stats_path(result.out_dir, result.prefix)}")
    if result.skipped:
        warn(f"{len(result.skipped)} samples not written (missing or unreadable image), "
             f"listed in {skipped_path(result.out_dir, result.prefix)}")
    if result.stale_shards:
        warn(f"{len(result.stale_shards)} shard files beyond the end of this input are left from an earlier "
             f"run and are not counted: {result.stale_shards[:3]}...")


def run_main(main: Callable) -> None:
    """A script's ``__main__``: the errors that name a bad input file or row (ValueError: not UTF-8, not JSON, a
    malformed row; OSError: a missing file, --missing error) as one ``error:`` line and exit status 1, no
    traceback."""
    try:
        main()
    except (ValueError, OSError) as error:
        sys.exit(f"error: {error}")


def warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr)


def report_list(count: int, what: str, list_path: str) -> None:
    """Say how many items of a kind were found and where they are listed (a warning when any)."""
    if count:
        warn(f"{count} {what}, listed in {list_path}")
    else:
        print(f"0 {what} ({list_path} is empty)")
