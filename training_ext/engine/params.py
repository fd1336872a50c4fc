"""Command-line flags of TULIP's two stages: open_clip_train's own parser, this project's flags added in front,
parsed once; then every mistake that flags and files reveal is reported before anything is built.

Sources: open_clip_train/params.py (open_clip_train 3.3: the parser, captured as ``parse_args`` builds it, and
its model-dependent optimizer defaults); TULIP's open_clip/training/params.py (github.com/ivonajdenkoska/tulip @
132c174f), whose spellings ``training_ext.stages.tulip_form`` translates.

``parse_args`` in order: argparse (nothing heavy is imported: ``--help`` prints here) -> checks of flag values
-> the stage translates TULIP's form into this project's namespace -> open_clip_train's optimizer defaults for
the final ``--model`` -> open_clip_train flags this engine does not honour are refused (``FLAG_POLICY``) -> the
stage's checks of models, files and loggers (``training_ext.engine.preflight``, which imports open_clip) -> flags
that would do nothing with the others given (``check_flag_combinations``). A
mistake is one ``<prog>: error: ...`` line on stderr and exit status 2, as argparse reports its own.

This module imports neither torch nor open_clip: it is what ``--help`` runs.
"""
import argparse
import difflib
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import open_clip_train.params as open_clip_train_params

from training_ext.common.folder_lines import CAPTION_LINES as FOLDER_CAPTION_LINES, parse_short_line

DATASET_TYPES = ("webdataset", "csv", "synthetic", "folder", "auto")
HONOURED = "honoured"

TORCHRUN_NOTE = ("Under torchrun put '--' before this module's flags (torchrun -m MODULE -- --logs ...): "
                 "torchrun's own parser reads '--logs' as its '--logs-specs' and stops with 'ambiguous option'.")


class UsageError(SystemExit):
    """A user mistake found in the flags or the files they name: exit status 2 (argparse's), message in str()."""

    def __init__(self, message: str):
        super().__init__(message)
        self.code = 2  # SystemExit exits with .code; the message has already been printed by ``fail``


def fail(prog: str, message: str) -> None:
    """Report ``message`` the way argparse reports a usage error (one line, exit status 2), without the usage."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise UsageError(message)


class StageFlags:
    """The command line of one stage, importable without torch: its flags (``add_arguments``), the translation
    of TULIP's spellings (``translate``), flag checks (``check_arguments``) and the checks of the models and files
    the flags name (``check_run``, which may import open_clip). The stage itself
    (``training_ext.engine.trainer.TrainingStage``) inherits these."""
    name: str = ""
    module: str = ""
    description: str = ""
    position: str = "rope"  # the relative-position type this entry point trains (rope / cope entry points)

    @property
    def prog(self) -> str:
        return f"python -m {self.module}"

    def error(self, message: str) -> None:
        fail(self.prog, message)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this stage's own flags (shown first in --help)."""

    def translate(self, args: argparse.Namespace) -> None:
        """Turn TULIP's spellings into this project's flags (same namespace, one code path afterwards)."""

    def check_arguments(self, args: argparse.Namespace) -> None:
        """Refuse inconsistent flag values of this stage with ``self.error`` (before translation: nothing is
        read or built yet)."""

    def check_run(self, args: argparse.Namespace) -> None:
        """Refuse models, weights and files that cannot work, before any model is built."""

    def foreign_flags(self) -> Dict[str, str]:
        """Flags of other commands mistakenly given to this one -> what to do instead (for the unknown-flag error)."""
        return {}


# ---------------------------------------------------------------------------------------------------------------
# open_clip_train flags: each is honoured by the engine or refused with the reason, per stage. A new open_clip
# release that adds a flag fails tests/training_ext/engine/test_flags.py until the flag is placed here.

_ZERO_SHOT = ("zero-shot ImageNet is not run during training; evaluate checkpoints with python -m training_ext.eval "
              "--imagenet DIR")
_REMOTE = "remote checkpoint sync is not implemented; sync <logs>/<name>/checkpoints yourself (e.g. aws s3 sync)"
_COCA = "CoCa models are not supported by TULIP's stages"
_TEACHER_IMAGE = "stage 1's image tower is the teacher's (frozen, used for validation only)"
_NO_TRAIN_IMAGES = ("stage 1 decodes no training images, and validation preprocesses images the way the teacher "
                    "was trained")
_TEXT_ONLY = "stage 1 trains only the student's text tower; the image tower is the teacher's, frozen"
_NO_NEGATIVES = ("stage 1's loss compares each caption with its own teacher feature: there are no negatives to "
                 "gather")
_NO_IMAGE_TEXT_LOSS = ("stage 1 has no image-text loss to make sigmoid (its loss compares each caption's features "
                       "with the teacher's); stage 2 takes --siglip")

FLAG_POLICY: Dict[str, object] = {
    "--train-data": HONOURED, "--train-data-upsampling-factors": HONOURED, "--val-data": HONOURED,
    "--train-num-samples": HONOURED, "--val-num-samples": HONOURED, "--dataset-type": HONOURED,
    "--dataset-resampled": HONOURED, "--csv-separator": HONOURED, "--csv-img-key": HONOURED,
    "--csv-caption-key": HONOURED,
    "--imagenet-val": _ZERO_SHOT, "--imagenet-v2": _ZERO_SHOT, "--zeroshot-frequency": _ZERO_SHOT,
    "--cache-dir": HONOURED, "--logs": HONOURED, "--log-local": HONOURED, "--name": HONOURED,
    "--workers": HONOURED, "--batch-size": HONOURED, "--epochs": HONOURED, "--epochs-cooldown": HONOURED,
    "--lr": HONOURED, "--beta1": HONOURED, "--beta2": HONOURED, "--eps": HONOURED, "--wd": HONOURED,
    "--momentum": HONOURED, "--warmup": HONOURED, "--opt": HONOURED, "--use-bn-sync": HONOURED,
    "--skip-scheduler": HONOURED, "--lr-scheduler": HONOURED, "--lr-cooldown-end": HONOURED,
    "--lr-cooldown-power": HONOURED, "--save-frequency": HONOURED,
    "--save-most-recent": HONOURED,  # always on: epoch_latest.pt is rewritten at every save
    "--val-frequency": HONOURED, "--resume": HONOURED, "--precision": HONOURED, "--model": HONOURED,
    "--pretrained": HONOURED,
    "--pretrained-image": {"distill": _TEACHER_IMAGE,
                           "finetune": ("it loads timm's ImageNet weights into a timm image tower (open_clip asserts "
                                        "on any other); stage 2's image tower comes from --pretrained")},
    "--lock-image": {"distill": _TEXT_ONLY, "finetune": HONOURED},
    "--lock-image-unlocked-groups": {"distill": _TEXT_ONLY, "finetune": HONOURED},
    "--lock-image-freeze-bn-stats": {"distill": _TEXT_ONLY, "finetune": HONOURED},
    "--image-mean": {"distill": _NO_TRAIN_IMAGES, "finetune": HONOURED},
    "--image-std": {"distill": _NO_TRAIN_IMAGES, "finetune": HONOURED},
    "--image-interpolation": {"distill": _NO_TRAIN_IMAGES, "finetune": HONOURED},
    "--image-resize-mode": {"distill": _NO_TRAIN_IMAGES, "finetune": HONOURED},
    "--aug-cfg": {"distill": _NO_TRAIN_IMAGES, "finetune": HONOURED},
    "--grad-checkpointing": HONOURED,
    "--local-loss": {"distill": _NO_NEGATIVES, "finetune": HONOURED},
    "--gather-with-grad": {"distill": _NO_NEGATIVES, "finetune": HONOURED},
    "--force-context-length": HONOURED,
    "--force-image-size": {"distill": _TEACHER_IMAGE, "finetune": HONOURED},
    "--force-quick-gelu": HONOURED,
    "--force-patch-dropout": {"distill": _TEACHER_IMAGE, "finetune": HONOURED},
    "--force-custom-text": {"distill": ("the student's RoPE/CoPE text tower is always built as open_clip's "
                                        "CustomTextCLIP (the teacher keeps its own layout)"),
                            "finetune": HONOURED},
    "--torchscript": "torch.jit.script is an inference option and cannot be used for training",
    "--torchcompile": HONOURED,  # CoPE towers are refused in engine.preflight (compiling CoPE is not ready)
    "--trace": "torch.jit.trace is an inference option and cannot be used for training",
    "--accum-freq": HONOURED, "--device": HONOURED, "--dist-url": HONOURED, "--dist-backend": HONOURED,
    "--report-to": HONOURED, "--wandb-notes": HONOURED, "--wandb-project-name": HONOURED, "--debug": HONOURED,
    "--copy-codebase": "copying the code base is not implemented (this project is an installed package)",
    "--horovod": "horovod is not supported; use torchrun or SLURM (srun) with torch.distributed",
    "--ddp-static-graph": HONOURED, "--no-set-device-rank": HONOURED, "--seed": HONOURED,
    "--grad-clip-norm": HONOURED,
    "--lock-text": {"distill": _TEXT_ONLY, "finetune": HONOURED},
    "--lock-text-unlocked-layers": {"distill": _TEXT_ONLY, "finetune": HONOURED},
    # always on: open_clip 3.3 locks LayerNorms with the other text weights (its lock asserts on anything else)
    "--lock-text-freeze-layer-norm": {"distill": _TEXT_ONLY, "finetune": HONOURED},
    "--log-every-n-steps": HONOURED,
    "--coca-caption-loss-weight": _COCA, "--coca-contrastive-loss-weight": _COCA,
    "--remote-sync": _REMOTE, "--remote-sync-frequency": _REMOTE, "--remote-sync-protocol": _REMOTE,
    "--delete-previous-checkpoint": HONOURED,
    "--distill-model": ("open_clip_train's --distill-model is image-text logit distillation; stage 1 takes its "
                        "teacher from --teacher-model"),
    "--distill-pretrained": ("open_clip_train's --distill-pretrained belongs to its logit distillation; stage 1 "
                             "takes the teacher's weights from --teacher-pretrained"),
    "--use-bnb-linear": "bitsandbytes int8 layers are not supported for training here",
    # stage 2: open_clip's SigLipLoss for both caption terms (training_ext.stages.finetune.clip_loss_for)
    "--siglip": {"distill": _NO_IMAGE_TEXT_LOSS, "finetune": HONOURED},
    "--loss-dist-impl": {"distill": _NO_IMAGE_TEXT_LOSS, "finetune": HONOURED},
}


def stage_policy(stage_name: str) -> Tuple[List[str], Dict[str, str]]:
    """(flags the stage honours, {refused flag: reason}) over open_clip_train's flags."""
    honoured, refused = [], {}
    for flag, rule in FLAG_POLICY.items():
        rule = rule.get(stage_name, HONOURED) if isinstance(rule, dict) else rule
        if rule == HONOURED:
            honoured.append(flag)
        else:
            refused[flag] = rule
    return honoured, refused


# ---------------------------------------------------------------------------------------------------------------
# the parser

def open_clip_train_parser() -> argparse.ArgumentParser:
    """open_clip_train's parser, complete: ``open_clip_train.params.parse_args`` builds it inside itself and parses
    at once, so it is taken at the moment it would parse (nothing is parsed)."""

    class Captured(Exception):
        pass

    taken = []

    def take(parser, *args, **kwargs):
        taken.append(parser)
        raise Captured

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = take
    try:
        open_clip_train_params.parse_args([])
    except Captured:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
    if not taken:
        raise RuntimeError("open_clip_train.params.parse_args no longer calls ArgumentParser.parse_args; "
                           "training_ext.engine.params must be updated for this open_clip_train release")
    return taken[0]


def _short_line(value: str):
    try:
        return parse_short_line(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("long-caption data and checkpoints (both stages)")
    group.add_argument(
        "--dataset-type", choices=DATASET_TYPES, default="auto",
        help="open_clip_train's choices plus 'folder' (train-CLIP style: x.jpg pairs with an x.txt anywhere under "
             "--train-data, one caption a line). 'auto': csv/tsv, tar, or folder for a directory.")
    group.add_argument(
        "--csv-short-caption-key", default=None,
        help="CSV column holding a short caption per row. Without it the short caption is the first sentence "
             "of the long caption (TULIP's and Long-CLIP's rule).")
    group.add_argument(
        "--wds-short-caption-key", default=None,
        help="Webdataset field holding the short caption (e.g. 'short.txt' for files 'key.short.txt'). "
             "Without it the short caption is the first sentence of the long caption.")
    group.add_argument(
        "--csv-image-root", default=None,
        help="Folder that relative image paths in --train-data / --val-data CSVs start from (default: the CSV "
             "file's own folder; never the working directory). E.g. the --image-root of a CSV written by "
             "scripts/prepare_sharegpt4v.py --relative-paths.")
    group.add_argument(
        "--csv-skip-missing-images", action="store_true", default=False,
        help="Drop CSV rows whose image file does not exist (counted in the log) instead of stopping the run "
             "with the row number and path.")
    group.add_argument(
        "--save-every-n-steps", type=int, default=0,
        help="Also write a resumable checkpoint (epoch_latest.pt) every N optimizer steps; 0 = only at epoch "
             "ends. '--resume latest' continues mid-epoch from it.")
    group.add_argument(
        "--folder-caption-line", choices=FOLDER_CAPTION_LINES, default="random",
        help="Folder data: the caption is a random line of the caption file, drawn anew every epoch (default), "
             "or always the first line (the long caption).")
    group.add_argument(
        "--folder-short-line", type=_short_line, default="first-sentence",
        help="Folder data, short caption: 'first-sentence' of the caption (default), a line number N, or "
             "'random' (another line than the caption's).")


def build_parser(stage: StageFlags) -> argparse.ArgumentParser:
    """open_clip_train's parser with the stage's flags and the common ones in front; a flag defined by both
    (``--model``, ``--pretrained``, ``--dataset-type``) keeps only this project's definition, so each is listed
    once, with the meaning it has in this stage."""
    parser = open_clip_train_parser()
    theirs = list(parser._action_groups)
    for group in theirs:
        if group.title in ("options", "optional arguments"):
            group.title = "open_clip_train flags (same meaning as in open_clip_train)"
    parser.conflict_handler = "resolve"  # groups added from now on replace open_clip_train's definition
    stage.add_arguments(parser)
    _add_common_flags(parser)
    ours = [group for group in parser._action_groups if group not in theirs]
    parser._action_groups[:] = ours + theirs
    parser.prog = stage.prog
    parser.usage = f"{stage.prog} [flags]  (TULIP's command lines run as written; see README 'Coming from TULIP')"
    parser.description = stage.description
    parser.epilog = TORCHRUN_NOTE
    parser.error = stage.error  # one line, exit status 2, no 60-line usage
    return parser


def _strip_torchrun_separator(argv: Sequence[str]) -> List[str]:
    """`torchrun -m module -- --logs x` hands the script a leading '--' (needed because torchrun's own
    --logs-specs makes --logs ambiguous); it separates launcher from script flags and means nothing here."""
    argv = list(argv)
    return argv[1:] if argv and argv[0] == "--" else argv


def unknown_flag_message(unknown: Sequence[str], parser: argparse.ArgumentParser, stage: StageFlags) -> str:
    """What an unknown flag is and what to give instead: another stage's or command's flag, an underscore
    spelling, or the closest flags of this command."""
    flags = [item.split("=", 1)[0] for item in unknown if item.startswith("-")]
    if not flags:
        return f"unexpected argument(s): {' '.join(unknown)} (flags take the form --name value)"
    known = sorted(parser._option_string_actions)
    foreign = stage.foreign_flags()
    parts = []
    for flag in flags:
        dashed = flag.replace("_", "-")
        if flag in foreign:
            parts.append(f"{flag}: {foreign[flag]}")
        elif dashed != flag and dashed in known:
            parts.append(f"{flag}: spelled {dashed} here")
        else:
            close = difflib.get_close_matches(dashed, known, n=3, cutoff=0.75)
            parts.append(f"{flag}: unknown" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return f"unrecognized arguments: {'; '.join(parts)}. {stage.prog} --help lists every flag"


def _changed(args: argparse.Namespace, parser: argparse.ArgumentParser, flag: str) -> bool:
    action = parser._option_string_actions.get(flag)
    return action is not None and getattr(args, action.dest) != action.default


def refuse_unhonoured_flags(args: argparse.Namespace, parser: argparse.ArgumentParser, stage: StageFlags) -> None:
    """An open_clip_train flag this stage cannot honour stops the run (instead of being echoed and ignored)."""
    _, refused = stage_policy(stage.name)
    for flag, reason in refused.items():
        if _changed(args, parser, flag):
            stage.error(f"{flag} is refused by {stage.prog}: {reason}")


def apply_optimizer_defaults(args: argparse.Namespace) -> None:
    """open_clip_train's own post-processing: lr / betas / eps by model name where not given (after TULIP's form
    is translated, so the name is the model that trains)."""
    if "timm" not in args.opt:
        for name, value in open_clip_train_params.get_default_params(args.model).items():
            if getattr(args, name) is None:
                setattr(args, name, value)


def check_flag_combinations(args: argparse.Namespace, stage: StageFlags) -> None:
    """Refuse flags that would do nothing, or fail once training starts, with the others given (``stage.error``):
    --train-data-upsampling-factors only with
    --dataset-resampled (open_clip_train's rule), one factor per '::' source; --dataset-resampled and a
    --val-num-samples cut only where the data is read as a webdataset / a map-style dataset; --train-num-samples
    at least one step's samples (--batch-size x --accum-freq x processes); --momentum only for a timm optimizer,
    which takes --beta1 and --beta2 together (open_clip_train's rules: AdamW has no momentum argument)."""
    timm = args.opt.lower().startswith("timm/")
    if args.momentum is not None and not timm:
        stage.error(f"--momentum is an argument of timm optimizers (--opt timm/sgd, ...); --opt {args.opt} has none "
                    "(AdamW's moment decays are --beta1 / --beta2)")
    if timm and (args.beta1 is None) != (args.beta2 is None):
        stage.error("a timm optimizer takes --beta1 and --beta2 together (open_clip_train's rule): give both or "
                    "neither")
    from open_clip_train.data import expand_urls  # after the stage's checks, which import open_clip anyway
    from training_ext.data.loaders import dataset_type
    if args.train_data_upsampling_factors is not None:
        if not args.dataset_resampled:
            # open_clip_train's own words (its get_wds_dataset asserts them once the data is built)
            stage.error("--train-data-upsampling-factors is only supported when sampling with replacement (with "
                        "--dataset-resampled); add --dataset-resampled or drop the factors")
        try:
            expand_urls(args.train_data, args.train_data_upsampling_factors)
        except (AssertionError, ValueError) as problem:
            stage.error(f"--train-data-upsampling-factors {args.train_data_upsampling_factors} for --train-data "
                        f"{args.train_data}: {problem} (one number per '::'-separated source)")
    train_kind = dataset_type(args, args.train_data) if args.train_data or args.dataset_type != "auto" else None
    if args.dataset_resampled and train_kind != "webdataset":
        stage.error(f"--dataset-resampled samples webdataset shards with replacement; --train-data is "
                    f"{train_kind or 'not given'} data, whose epochs are seeded permutations of its samples (drop "
                    f"the flag; --train-num-samples sets how many samples an epoch draws)")
    if args.train_num_samples is not None:
        step = args.batch_size * args.accum_freq * world_size_from_env()
        if args.train_num_samples < step:
            stage.error(f"--train-num-samples {args.train_num_samples} is fewer than one step's samples (--batch-size "
                        f"{args.batch_size} x --accum-freq {args.accum_freq} x {world_size_from_env()} process(es) "
                        f"= {step}): an epoch would train no step")
    if args.val_num_samples is not None and args.val_data and dataset_type(args, args.val_data) == "webdataset":
        stage.error("--val-num-samples cuts CSV, folder and synthetic validation data to its first N samples; "
                    "webdataset validation reads every sample of --val-data: give fewer shards instead")


def parse_args(argv: Optional[Sequence[str]], stage: StageFlags) -> argparse.Namespace:
    """Parse and check the flags of one stage into a single open_clip_train-style namespace (``args.stage`` is the
    stage's name, ``args.flag_notes`` what translation and defaults decided, logged when the run starts)."""
    argv = _strip_torchrun_separator(sys.argv[1:] if argv is None else argv)
    parser = build_parser(stage)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        stage.error(unknown_flag_message(unknown, parser, stage))
    args.stage = stage.name
    args.flag_notes = []
    args.command_flags = list(argv)  # as given (TULIP's form included): a stop on SIGTERM prints them to resume
    if args.accum_freq < 1:
        stage.error(f"--accum-freq must be >= 1, got {args.accum_freq}")
    if args.save_every_n_steps < 0:
        stage.error(f"--save-every-n-steps must be >= 0, got {args.save_every_n_steps}")
    stage.check_arguments(args)
    stage.translate(args)
    apply_optimizer_defaults(args)
    refuse_unhonoured_flags(args, parser, stage)
    stage.check_run(args)
    check_flag_combinations(args, stage)
    return args


def world_size_from_env() -> int:
    """The number of processes the launcher started, read as open_clip_train.distributed.world_info_from_env
    reads it (torchrun, SLURM, MPI); 1 without a launcher."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if name in os.environ:
            return int(os.environ[name])
    return 1
