"""Command-line flags: open_clip_train's parser plus the flags TULIP's two stages add.

Every open_clip_train flag keeps its meaning: our flags are parsed first by a small parser of their own, the rest
go to ``open_clip_train.params.parse_args`` unchanged, and the two namespaces are merged.
"""
import argparse
import sys
from typing import List, Optional, Sequence

from open_clip_train.params import parse_args as parse_open_clip_args

DISTILL_LOSSES = ("cosine", "mse", "l2")


def parse_loss_weights(spec: str) -> dict:
    """'cosine' -> {'cosine': 1.0}; 'cosine=1,mse=0.5' -> a weighted sum of the named losses."""
    weights = {}
    for part in spec.split(","):
        name, _, weight = part.strip().partition("=")
        if name not in DISTILL_LOSSES:
            raise argparse.ArgumentTypeError(
                f"unknown distillation loss {name!r} in {spec!r}; choose from {', '.join(DISTILL_LOSSES)}")
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name!r} in {spec!r} is not a number: {weight!r}")
    return weights


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


def _add_distill_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("stage 1: relative position distillation (open_clip_ext)")
    group.add_argument(
        "--teacher-model", required=True,
        help="The frozen 77-token teacher (e.g. ViT-L-14-quickgelu). It reads the first 77 tokens of the "
             "student's ids; its image tower is used for validation only.")
    group.add_argument(
        "--teacher-pretrained", default="",
        help="Weights of the teacher: an open_clip tag (e.g. openai) or a checkpoint path.")
    group.add_argument(
        "--distill-loss", type=parse_loss_weights, default=parse_loss_weights("cosine"),
        help="Loss between student and teacher projected text features: cosine (1 - mean cosine similarity), "
             "mse (mean squared error) or l2 (mean euclidean distance), or a weighted sum such as "
             "'cosine=1,mse=0.5'. Default: cosine.")


def _add_finetune_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("stage 2: context fine-tuning (open_clip_ext)")
    group.add_argument(
        "--student-checkpoint", default=None,
        help="Stage-1 checkpoint whose text tower (distilled text projection included) replaces the text tower "
             "built from --pretrained; the vision tower and logit scale come from --pretrained.")
    group.add_argument(
        "--short-caption-weight", type=float, default=0.2,
        help="Loss = CLIP loss on long captions + this weight x CLIP loss on short captions. Default 0.2; "
             "0 trains on long captions only.")


def _extra_parser(stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    if stage == "distill":
        _add_distill_flags(parser)
    elif stage == "finetune":
        _add_finetune_flags(parser)
    else:
        raise ValueError(f"unknown stage {stage!r}")
    _add_common_flags(parser)
    return parser


def _strip_torchrun_separator(argv: Sequence[str]) -> List[str]:
    """`torchrun -m module -- --logs x` hands the script a leading '--' (needed because torchrun's own
    --logs-specs makes --logs ambiguous); it separates launcher from script flags and means nothing here."""
    argv = list(argv)
    return argv[1:] if argv and argv[0] == "--" else argv


def print_help(stage: str, prog: str) -> None:
    """Our flags first, then open_clip_train's (which exits)."""
    extra = _extra_parser(stage)
    extra.prog = prog
    print(extra.format_help().replace("usage:", "TULIP flags, usage:", 1))
    print("All open_clip_train flags below keep their meaning.\n")
    parse_open_clip_args(["--help"])


def parse_args(argv: Optional[Sequence[str]], stage: str) -> argparse.Namespace:
    """Parse the flags of one stage ('distill' or 'finetune') into a single open_clip_train-style namespace."""
    argv = _strip_torchrun_separator(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_help(stage, prog=f"python -m training_ext.main_{'distill' if stage == 'distill' else 'context_finetune'}_rope")
        raise SystemExit(0)
    extra, rest = _extra_parser(stage).parse_known_args(argv)
    args = parse_open_clip_args(rest)
    for name, value in vars(extra).items():
        setattr(args, name, value)
    args.stage = stage
    _reject_conflicting_flags(args)
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
    if args.stage == "finetune" and args.short_caption_weight < 0:
        raise SystemExit(f"--short-caption-weight must be >= 0, got {args.short_caption_weight}")
