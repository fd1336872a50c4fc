"""Command-line flags: open_clip_train's parser plus the flags TULIP's two stages add.

Every open_clip_train flag keeps its meaning: our flags are parsed first by a small parser of their own, the rest
go to ``open_clip_train.params.parse_args`` unchanged, and the two namespaces are merged.
"""
import argparse
import sys
from typing import List, Optional, Sequence

from open_clip_train.params import parse_args as parse_open_clip_args

from .folder_data import CAPTION_LINES as FOLDER_CAPTION_LINES, parse_short_line
from .pcm import DEFAULT_PCM_COMPONENTS, SHORT_CAPTION_LOSSES

DISTILL_LOSSES = ("cosine", "mse", "l2")
DATASET_TYPES = ("webdataset", "csv", "synthetic", "folder", "auto")


def _short_line(value: str):
    try:
        return parse_short_line(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


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


def _add_distill_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("stage 1: relative position distillation (open_clip_ext)")
    group.add_argument(
        "--teacher-model", default=None,
        help="The frozen 77-token teacher (e.g. ViT-L-14-quickgelu). It reads the first 77 tokens of the "
             "student's ids; its image tower is used for validation only. Required unless --teacher-cache.")
    group.add_argument(
        "--teacher-cache", default=None,
        help="Folder of precomputed teacher embeddings (scripts/precompute_teacher_embeddings.py): the teacher "
             "does not run during training. Refused when it does not match --teacher-model / "
             "--teacher-pretrained (name, checkpoint sha256, tokenizer length) or the data's caption field; "
             "embeddings of another width (e.g. an LLM's) are reached through a learned linear map.")
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
    group.add_argument(
        "--short-caption-loss", choices=SHORT_CAPTION_LOSSES, default="clip",
        help="Short captions against the image features ('clip', TULIP) or against their rank-k PCA "
             "reconstruction over the batch ('pcm', Long-CLIP's primary component matching).")
    group.add_argument(
        "--pcm-components", type=int, default=DEFAULT_PCM_COMPONENTS,
        help="Principal components kept by --short-caption-loss pcm (default %(default)s, Long-CLIP's).")
    group.add_argument(
        "--label-smoothing", type=float, default=0.0,
        help="Label smoothing of the long and short CLIP losses (Long-CLIP uses 0.1; default 0).")


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
    if args.stage == "distill" and not (args.teacher_model or args.teacher_cache):
        raise SystemExit("stage 1 needs a teacher: --teacher-model (run live) or --teacher-cache (precomputed)")
    if args.stage == "finetune":
        _reject_bad_short_caption_loss(args)


def _reject_bad_short_caption_loss(args: argparse.Namespace) -> None:
    if args.pcm_components < 1:
        raise SystemExit(f"--pcm-components must be >= 1, got {args.pcm_components}")
    if not 0.0 <= args.label_smoothing < 1.0:
        raise SystemExit(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.short_caption_loss == "pcm" and args.short_caption_weight == 0:
        raise SystemExit("--short-caption-loss pcm needs a --short-caption-weight above 0 (Long-CLIP uses 1)")
