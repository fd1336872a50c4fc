"""TULIP's command lines, translated into this project's flags (one namespace, one code path afterwards).

TULIP (arXiv 2410.10034; github.com/ivonajdenkoska/tulip @ 132c174f, open_clip/training/params.py and
main_{distill,context_finetune}_{rope,cope}.py) names the *base* architecture with ``--model`` (e.g. ViT-L-14) and
builds both models from it: the teacher is ``--model``/``--pretrained`` at ``--context-length``, the student the
same base with RoPE (or CoPE, through the ``*_cope`` entry points) at ``--student-context-length``, initialised
from the teacher. Here ``--model`` names the model that trains (``ViT-L-14-rope-248``) and the teacher has flags
of its own. ``translate_distill`` / ``translate_finetune`` rewrite the first form into the second; combining the
two inconsistently is an error naming which flag wins what.

TULIP's own stage-2 recipe (train at ``--extended-context-length`` with a dynamic-NTK RoPE base
``--scaling-factor``, keep the original CLIP text projection) is ``--recipe tulip-original``; TULIP's spellings of
its flags turn it on. Its NTK setting goes into the model config (``text_cfg.rope_ntk_factor``,
``rope_ntk_trained_length``), so the saved checkpoint's ``model_cfg`` carries it.

Nothing heavy is imported at module level (flag definitions are needed by ``--help``); translation imports
open_clip_ext.
"""
import argparse
from typing import List, Optional

STAGE1_SPELLINGS = ("--context-length", "--student-context-length", "--loss-type")
STAGE2_SPELLINGS = STAGE1_SPELLINGS + ("--student-model", "--extended-context-length", "--scaling-factor")
NTK_SPELLINGS = ("--extended-context-length", "--scaling-factor")
RECIPES = ("corrected", "tulip-original")

DEFAULT_STUDENT_CONTEXT = 248      # this project's; TULIP's params default is 200, its README passes 248
TULIP_STUDENT_CONTEXT = 200
TULIP_EXTENDED_CONTEXT = 231       # TULIP's --extended-context-length default (DEFAULT_CONTEXT_LENGTH * 3)
TULIP_SCALING_FACTOR = 8.0         # TULIP's --scaling-factor default
DEFAULT_DISTILL_LOSS = "cosine"    # this project's; TULIP's --loss-type default is mse, its README passes cosine


def add_spellings(parser: argparse.ArgumentParser, stage_name: str) -> None:
    """TULIP's flags, in a group of their own (defaults None: whether a flag was given decides the form)."""
    group = parser.add_argument_group(
        "TULIP's spellings (python -m training.main_* command lines run as written with training_ext. in front; "
        "each maps onto the flags above, see README 'Coming from TULIP')")
    if stage_name == "distill":
        group.add_argument("--context-length", type=int, default=None, metavar="N",
                           help="TULIP: the teacher's context. Checked against the teacher's config (77 for stock "
                                "CLIP); default: the teacher's own.")
        group.add_argument("--student-context-length", type=int, default=None, metavar="N",
                           help=f"TULIP: the student's context; with --model BASE the student is BASE-<position>-N. "
                                f"Default {DEFAULT_STUDENT_CONTEXT} (TULIP's was {TULIP_STUDENT_CONTEXT}).")
        group.add_argument("--loss-type", default=None, metavar="{cosine,mse,l2}",
                           help=f"TULIP's spelling of --distill-loss. Default {DEFAULT_DISTILL_LOSS} (TULIP's was "
                                "mse).")
        return
    group.add_argument("--context-length", type=int, default=None, metavar="N",
                       help="TULIP: the base model's context (checked against its config, 77 for stock CLIP).")
    group.add_argument("--student-context-length", type=int, default=None, metavar="N",
                       help=f"TULIP: the context stage 1 trained the student at; with --model BASE the fine-tuned "
                            f"model is BASE-<position>-N. Default {DEFAULT_STUDENT_CONTEXT}.")
    group.add_argument("--loss-type", default=None, metavar="clip_loss",
                       help="TULIP: stage 2's loss; only clip_loss (the CLIP loss) is meaningful here.")
    group.add_argument("--student-model", default=None, metavar="CHECKPOINT",
                       help="TULIP's spelling of --student-checkpoint.")
    group.add_argument("--extended-context-length", type=int, default=None, metavar="N",
                       help=f"TULIP's original recipe: train at N tokens with a dynamic-NTK RoPE base (turns on "
                            f"--recipe tulip-original; default there {TULIP_EXTENDED_CONTEXT}).")
    group.add_argument("--scaling-factor", type=float, default=None, metavar="S",
                       help=f"TULIP's original recipe: the dynamic-NTK scaling factor, saved as "
                            f"text_cfg.rope_ntk_factor (turns on --recipe tulip-original; default there "
                            f"{TULIP_SCALING_FACTOR:g}).")


def given(args: argparse.Namespace, spellings) -> List[str]:
    return [flag for flag in spellings if getattr(args, flag[2:].replace("-", "_"), None) is not None]


def _left_out(args, flag: str, value, tulip_default=None) -> None:
    was = f"; TULIP's default was {tulip_default}" if tulip_default is not None else ""
    args.flag_notes.append(f"TULIP-form flag {flag} left out: {value} (this project's default{was})")


def ensure_variant(stage, base: str, position: str, context: int, notes: List[str], **options) -> str:
    """The registered name of ``base`` with ``position`` at ``context`` (registered now if it is not shipped)."""
    import open_clip
    from open_clip_ext.configs import register_variant, variant_name
    name = options.pop("name", None) or variant_name(base, position, context)
    if open_clip.get_model_config(name) is None:
        try:
            register_variant(base, position, context, name=name, **options)
        except (ValueError, RuntimeError) as problem:  # a base whose text tower cannot take relative positions
            stage.error(f"--model {base}: cannot derive the {position.upper()} model at {context} tokens: {problem}")
        arguments = "".join(f", {key}={value!r}" for key, value in options.items())
        notes.append(f"registered {name} = open_clip_ext.register_variant({base!r}, {position!r}, {context}"
                     f"{arguments}, name={name!r}); register it the same way to load its checkpoints")
    return name


def base_of(model: str) -> Optional[str]:
    """'ViT-L-14-rope-248' -> 'ViT-L-14'; None for a name that is not a derived variant."""
    from open_clip_ext.configs import split_variant_name
    parsed = split_variant_name(model)
    return parsed[0] if parsed else None


class _Model:
    """What ``--model`` names, for the translation: its config's text tower, position type and context."""

    def __init__(self, args, stage):
        from training_ext.engine.preflight import is_remote_name, require_model
        if is_remote_name(args.model):
            stage.error(f"--model {args.model}: TULIP's flags derive the models from a registered config; give "
                        "this project's form (--model <student config>) for hf-hub:/local-dir: models")
        self.name = args.model
        config = require_model(args.model, "--model", stage.error) or {}
        self.text = config.get("text_cfg", {})
        self.kind = self.text.get("pos_embed_type")
        self.context = self.text.get("context_length", 77)
        self.relative = self.kind in ("rope", "cope")
        self.base = base_of(args.model) if self.relative else None


def _check_named_student(args, stage, model: _Model) -> None:
    """--model already names a RoPE/CoPE model: TULIP's --student-context-length must agree (--position is
    checked with the model, by the stage's check_run)."""
    if args.student_context_length is not None and args.student_context_length != model.context:
        base = model.base or "<base>"
        stage.error(
            f"--model {model.name} fixes the student's context at {model.context}; --student-context-length "
            f"{args.student_context_length} cannot change it (it applies when --model is a base). Give --model "
            f"{base} --student-context-length {args.student_context_length} (TULIP's form), or --model "
            f"{base}-{model.kind}-{args.student_context_length} without --student-context-length")


def _check_base_context(args, stage, base: str) -> None:
    """TULIP's --context-length is the base (teacher) context: it must be what the base config reads."""
    if args.context_length is None:
        return
    from training_ext.engine.preflight import model_config
    context = ((model_config(base) or {}).get("text_cfg") or {}).get("context_length", 77)
    if args.context_length != context:
        stage.error(f"--context-length {args.context_length}: {base} reads {context} tokens (TULIP's "
                    f"--context-length is the teacher's context, fixed by its config); pass {context} or leave it out")


def _no_force_context(args, stage) -> None:
    if args.force_context_length:
        stage.error("--force-context-length and TULIP's context flags both set the student's context: in TULIP's "
                    "form give --student-context-length only")


def translate_distill(args: argparse.Namespace, stage, losses) -> None:
    """Stage 1: TULIP's ``--model BASE --pretrained P [--context-length C] [--student-context-length L]
    [--loss-type X]`` -> ``--teacher-model BASE --teacher-pretrained P --model BASE-<position>-L --distill-loss X``
    (the student starts from the teacher's weights). ``losses``: the names --distill-loss accepts."""
    spellings = given(args, STAGE1_SPELLINGS)
    if args.loss_type is not None:
        if args.loss_type not in losses:
            stage.error(f"--loss-type {args.loss_type}: stage 1's losses are {', '.join(losses)} "
                        f"(TULIP's clip_loss is stage 2's)")
        if args.distill_loss is not None and args.distill_loss != {args.loss_type: 1.0}:
            stage.error(f"--loss-type {args.loss_type} (TULIP's spelling of --distill-loss) and --distill-loss "
                        "disagree; give one of them")
        args.distill_loss = {args.loss_type: 1.0}
    if args.distill_loss is None:
        args.distill_loss = {DEFAULT_DISTILL_LOSS: 1.0}
        if spellings:
            _left_out(args, "--loss-type", DEFAULT_DISTILL_LOSS, "mse")
    if not args.model:
        stage.error("--model is required: the student (e.g. ViT-L-14-rope-248, with --teacher-model ViT-L-14) or, "
                    "in TULIP's form, the base (e.g. ViT-L-14 --student-context-length 248)")
    args.tulip_form = bool(spellings)
    if not spellings:
        return
    model = _Model(args, stage)
    if model.relative:
        _check_named_student(args, stage, model)
        if not (args.teacher_model or args.teacher_cache):
            if model.base is None:
                stage.error(f"--model {model.name} does not name its base: give the teacher with --teacher-model")
            args.teacher_model = model.base
            args.teacher_pretrained = args.teacher_pretrained or args.pretrained or ""
            args.flag_notes.append(f"TULIP form: teacher {model.base} (the base of --model {model.name})")
    elif model.kind is None:
        base = model.name
        if args.teacher_model and args.teacher_model != base:
            stage.error(
                f"--teacher-model {args.teacher_model} and --model {base} both name the teacher: with TULIP's flags "
                f"({', '.join(spellings)}) --model is the base that teacher and student are built from. Drop "
                f"--teacher-model, or use this project's form (--model {base}-{stage_position(args, stage)}-248 "
                f"--teacher-model {args.teacher_model}) without TULIP's flags")
        if args.teacher_pretrained and args.pretrained and args.teacher_pretrained != args.pretrained:
            stage.error(f"--pretrained {args.pretrained} and --teacher-pretrained {args.teacher_pretrained}: in "
                        "TULIP's form --pretrained is the teacher's weights (the student starts from them); give one")
        _no_force_context(args, stage)
        from training_ext.engine.preflight import check_weights
        check_weights(base, args.pretrained, "--pretrained", stage.error)  # named as given, before it moves
        context = args.student_context_length
        if context is None:
            context = DEFAULT_STUDENT_CONTEXT
            _left_out(args, "--student-context-length", context, TULIP_STUDENT_CONTEXT)
        args.teacher_model, args.teacher_pretrained = base, args.teacher_pretrained or args.pretrained or ""
        args.model = ensure_variant(stage, base, stage_position(args, stage), context, args.flag_notes)
        args.pretrained = ""  # the student starts from the teacher's weights (DistillStage.build_models)
        args.flag_notes.append(f"TULIP form: teacher --teacher-model {base} --teacher-pretrained "
                               f"{args.teacher_pretrained or '(none)'}, student --model {args.model}")
    else:
        stage.error(f"TULIP's form builds a RoPE/CoPE student from a stock base, but --model {model.name} has "
                    f"Long-CLIP/uniform positions; give the base (e.g. {model.name.rsplit('-', 2)[0]})")
    if args.teacher_model:
        _check_base_context(args, stage, args.teacher_model)
    if args.context_length is None:
        args.flag_notes.append("TULIP-form flag --context-length left out: the teacher's own context")


def stage_position(args, stage) -> str:
    return args.position or stage.position


def translate_finetune(args: argparse.Namespace, stage) -> None:
    """Stage 2: TULIP's ``--model BASE --student-model C [--student-context-length L] [--loss-type clip_loss]``
    -> ``--model BASE-<position>-L --student-checkpoint C``; with ``--recipe tulip-original`` (or TULIP's
    ``--extended-context-length`` / ``--scaling-factor``) the model is BASE with RoPE at the extended context and
    the dynamic-NTK base in its config, and the original CLIP text projection is kept."""
    spellings = given(args, STAGE2_SPELLINGS)
    if args.loss_type not in (None, "clip_loss"):
        stage.error(f"--loss-type {args.loss_type}: stage 2 trains with the CLIP loss (TULIP's clip_loss); "
                    "cosine/mse/l2 are stage 1's distillation losses")
    if args.student_model is not None:
        if args.student_checkpoint and args.student_checkpoint != args.student_model:
            stage.error("--student-model (TULIP's spelling) and --student-checkpoint name different checkpoints; "
                        "give one")
        from training_ext.engine.preflight import check_readable_file
        check_readable_file(args.student_model, "--student-model", stage.error)  # named as given
        args.student_checkpoint = args.student_model
    ntk = given(args, NTK_SPELLINGS)
    if args.recipe is None:
        args.recipe = "tulip-original" if ntk else "corrected"
        if ntk:
            args.flag_notes.append(f"{' and '.join(ntk)} (TULIP's spelling) turned on --recipe tulip-original")
    elif args.recipe == "corrected" and ntk:
        stage.error(f"{', '.join(ntk)} belong to --recipe tulip-original (TULIP's dynamic-NTK stage 2); drop them "
                    "or pass --recipe tulip-original")
    if not args.model:
        stage.error("--model is required: the stage-1 student's config (e.g. ViT-L-14-rope-248) or, in TULIP's "
                    "form, the base (e.g. ViT-L-14 --student-model <stage-1 checkpoint>)")
    args.tulip_form = bool(spellings)
    args.student_config = None
    if not spellings and args.recipe == "corrected":
        return
    model = _Model(args, stage)
    if model.relative:
        _check_named_student(args, stage, model)
        base, position, trained = model.base, model.kind, model.context
        student = model.name
    elif model.kind is None and args.allow_plain_clip:
        derived = given(args, ("--student-context-length", "--student-model")) + ntk
        if derived:
            stage.error(f"--allow-plain-clip fine-tunes --model {model.name} as it is, but {', '.join(derived)} "
                        "(TULIP's form) derive a RoPE/CoPE model from it; drop one or the other")
        return
    elif model.kind is None:
        _no_force_context(args, stage)
        base, position = model.name, stage_position(args, stage)
        trained = args.student_context_length
        if trained is None:
            trained = DEFAULT_STUDENT_CONTEXT
            _left_out(args, "--student-context-length", trained, TULIP_STUDENT_CONTEXT)
        student = ensure_variant(stage, base, position, trained, args.flag_notes)
    else:
        if given(args, ("--context-length", "--student-context-length")) or args.recipe != "corrected":
            stage.error(f"--model {model.name} has Long-CLIP/uniform positions: TULIP's context flags and "
                        "--recipe tulip-original apply to a stock base or a RoPE/CoPE model")
        return
    if base:
        _check_base_context(args, stage, base)
    args.student_config = student
    if args.recipe == "corrected":
        args.model = student
        args.flag_notes.append(f"TULIP form: --model {student}, --student-checkpoint {args.student_checkpoint}")
        return
    if position != "rope" or base is None:
        stage.error(f"--recipe tulip-original extends a RoPE model by dynamic NTK; --model {args.model} with "
                    f"{position.upper()} positions cannot take it (give a stock base or a *-rope-N model)")
    if not args.student_checkpoint:
        stage.error("--recipe tulip-original fine-tunes a stage-1 student: give --student-model (or "
                    "--student-checkpoint) with the stage-1 checkpoint")
    if not args.pretrained:
        stage.error("--recipe tulip-original keeps the original CLIP text projection: give the base's weights "
                    "with --pretrained (e.g. openai)")
    extended, factor = args.extended_context_length, args.scaling_factor
    if extended is None:
        extended = TULIP_EXTENDED_CONTEXT
        _left_out(args, "--extended-context-length", extended)
    if factor is None:
        factor = TULIP_SCALING_FACTOR
        _left_out(args, "--scaling-factor", factor)
    if extended < 2 or factor <= 0:
        stage.error(f"--extended-context-length {extended} / --scaling-factor {factor}: need a context of at least 2 "
                    "and a positive factor")
    args.extended_context_length, args.scaling_factor = extended, factor
    args.model = ensure_variant(stage, base, "rope", extended, args.flag_notes,
                                name=f"{base}-rope-{extended}-ntk{factor:g}-from{trained}",
                                rope_ntk_factor=factor, rope_ntk_trained_length=trained)
    args.flag_notes.append(
        f"--recipe tulip-original: --model {args.model} (RoPE at {extended} tokens, dynamic-NTK factor {factor:g} "
        f"over the {trained} tokens stage 1 trained), text tower from {args.student_checkpoint} with the original "
        f"text projection of --pretrained {args.pretrained}")
