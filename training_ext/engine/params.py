"""Command-line flags: open_clip_train's parser plus the flags TULIP's two stages add (each stage adds its own
through ``TrainingStage.add_arguments``; the data and checkpoint flags both share are here).

Every open_clip_train flag keeps its meaning: our flags are parsed first by a small parser of their own, the rest
go to ``open_clip_train.params.parse_args`` unchanged, and the two namespaces are merged.
"""
import argparse
import sys
from typing import List, Optional, Sequence

from open_clip_train.params import parse_args as parse_open_clip_args

from training_ext.data.folder import CAPTION_LINES as FOLDER_CAPTION_LINES, parse_short_line

DATASET_TYPES = ("webdataset", "csv", "synthetic", "folder", "auto")


def _short_line(value: str):
    try:
        return parse_short_line(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("long-caption data and checkpoints (open_clip_ext)")
    group.add_argument(
        "--csv-short-caption-key", default=None,
        help="CSV column holding a short caption per row. Without it the short caption is the first sentence "
             "of the long caption (TULIP's and Long-CLIP's rule).")
    group.add_argument(
        "--wds-short-caption-key", default=None,
        help="Webdataset field holding the short caption (e.g. 'short.txt' for files 'key.short.txt'). "
             "Without it the short caption is the first sentence of the long caption.")
    group.add_argument(
        "--csv-skip-missing-images", action="store_true", default=False,
        help="Drop CSV rows whose image file does not exist (counted in the log) instead of stopping the run "
             "with the row number and path.")
    group.add_argument(
        "--save-every-n-steps", type=int, default=0,
        help="Also write a resumable checkpoint (epoch_latest.pt) every N optimizer steps; 0 = only at epoch "
             "ends. '--resume latest' continues mid-epoch from it.")
    group.add_argument(
        "--dataset-type", choices=DATASET_TYPES, default="auto",
        help="open_clip_train's choices plus 'folder' (train-CLIP style: x.jpg pairs with an x.txt anywhere under "
             "--train-data, one caption a line). 'auto': csv/tsv, tar, or folder for a directory.")
    group.add_argument(
        "--folder-caption-line", choices=FOLDER_CAPTION_LINES, default="random",
        help="Folder data: the caption is a random line of the caption file, drawn anew every epoch (default), "
             "or always the first line (the long caption).")
    group.add_argument(
        "--folder-short-line", type=_short_line, default="first-sentence",
        help="Folder data, short caption: 'first-sentence' of the caption (default), a line number N, or "
             "'random' (another line than the caption's).")


def _extra_parser(stage) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    stage.add_arguments(parser)
    _add_common_flags(parser)
    return parser


def _strip_torchrun_separator(argv: Sequence[str]) -> List[str]:
    """`torchrun -m module -- --logs x` hands the script a leading '--' (needed because torchrun's own
    --logs-specs makes --logs ambiguous); it separates launcher from script flags and means nothing here."""
    argv = list(argv)
    return argv[1:] if argv and argv[0] == "--" else argv


def print_help(stage, prog: str) -> None:
    """Our flags first, then open_clip_train's (which exits)."""
    extra = _extra_parser(stage)
    extra.prog = prog
    print(extra.format_help().replace("usage:", "TULIP flags, usage:", 1))
    print("All open_clip_train flags below keep their meaning.\n")
    parse_open_clip_args(["--help"])


def parse_args(argv: Optional[Sequence[str]], stage) -> argparse.Namespace:
    """Parse the flags of one stage (a ``training_ext.engine.trainer.TrainingStage``) into a single
    open_clip_train-style namespace; ``args.stage`` is the stage's name."""
    argv = _strip_torchrun_separator(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_help(stage, prog=stage.prog)
        raise SystemExit(0)
    extra, rest = _extra_parser(stage).parse_known_args(argv)
    args = parse_open_clip_args(rest)
    for name, value in vars(extra).items():
        setattr(args, name, value)
    args.stage = stage.name
    _reject_conflicting_flags(args)
    stage.check_arguments(args)
    return args


def _reject_conflicting_flags(args: argparse.Namespace) -> None:
    """open_clip_train flags whose meaning clashes with TULIP's stages stop the run instead of being ignored."""
    if args.distill_model or args.distill_pretrained:
        raise SystemExit(
            "--distill-model/--distill-pretrained is open_clip_train's image-text logit distillation; "
            "stage 1 uses --teacher-model/--teacher-pretrained instead.")
    if args.siglip:
        raise SystemExit("--siglip is not supported: both stages use the CLIP (softmax) loss or feature distillation.")
    if args.horovod:
        raise SystemExit("--horovod is not supported; use torchrun or SLURM (srun) with torch.distributed")
    if args.torchscript or args.trace:
        raise SystemExit("--torchscript/--trace are inference options and cannot be used for training")
    if args.accum_freq < 1:
        raise SystemExit(f"--accum-freq must be >= 1, got {args.accum_freq}")
    if args.save_every_n_steps < 0:
        raise SystemExit(f"--save-every-n-steps must be >= 0, got {args.save_every_n_steps}")

