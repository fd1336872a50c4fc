"""The command lines of TULIP's two stages: their flags, checks and the checks of what the flags name.

Importable without torch (``--help`` runs on this module and ``engine.params``); ``check_run`` imports open_clip
through ``training_ext.engine.preflight``. The stages themselves (``distill_stage.DistillStage``,
``finetune_stage.FinetuneStage``) inherit these classes, so a stage's flags and its hooks stay one object.
"""
import argparse
import os
from typing import Dict

from training_ext.engine.params import StageFlags, world_size_from_env
from training_ext.stages import tulip_form

DISTILL_LOSSES = ("cosine", "mse", "l2")
SHORT_CAPTION_LOSSES = ("clip", "pcm")
DEFAULT_PCM_COMPONENTS = 32  # Long-CLIP's k
POSITIONS = ("rope", "cope")
# open_clip_ext.kernels.dispatch.COPE_IMPLS, spelt out because this module imports no torch (tests check they agree)
COPE_IMPLS = ("function", "torch", "triton", "autograd")
# Spellings of older open_clip releases still found in scripts.
_OLD_OPEN_CLIP = {"--openai-pretrained": "old open_clip spelling: give --pretrained openai",
                  "--norm_gradient_clip": "old open_clip spelling: give --grad-clip-norm"}


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


def _position_flag(group, entry_position: str) -> None:
    group.add_argument(
        "--position", choices=POSITIONS, default=None,
        help=f"Relative positions of a student built from a base --model (TULIP's form); default {entry_position} "
             f"(this entry point's). With a RoPE/CoPE --model it must agree.")


def _cope_impl_flag(group) -> None:
    group.add_argument(
        "--cope-impl", choices=COPE_IMPLS, default=None,
        help="CoPE attention of a CoPE model. Default ('function'): the memory-lean PyTorch op on every device, "
             "or the fused Triton kernels when OPEN_CLIP_EXT_COPE_IMPL=triton. 'torch': the PyTorch op whatever "
             "the environment. 'triton': the fused Triton kernels, CUDA only and opt-in until they pass `make "
             "gpu-check`; refused before any model is built where Triton does not import, the device is not CUDA "
             "or with --torchcompile. 'autograd': op by op (for checks). The run logs which one runs.")


def _other_stage_flags(this: StageFlags, other: StageFlags) -> Dict[str, str]:
    """The other stage's own flags -> 'a stage-N flag: python -m ...' (for the unknown-flag error)."""
    scratch = argparse.ArgumentParser(add_help=False, conflict_handler="resolve")
    other.add_arguments(scratch)
    mine = argparse.ArgumentParser(add_help=False, conflict_handler="resolve")
    this.add_arguments(mine)
    return {flag: f"a flag of {other.description.split(':')[0].lower()} ({other.prog})"
            for flag in scratch._option_string_actions if flag not in mine._option_string_actions}


class DistillFlags(StageFlags):
    name = "distill"
    description = "Stage 1: distil a 77-token CLIP text tower into a long-context RoPE/CoPE student."

    def __init__(self, position: str = "rope"):
        self.position = position
        self.module = f"training_ext.main_distill_{position}"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("stage 1: relative position distillation (this project's flags)")
        group.add_argument(
            "--model", default=None,
            help="The student that trains: a config with relative positions and a longer context than the "
                 "teacher (e.g. ViT-L-14-rope-248). In TULIP's form the base instead (e.g. ViT-L-14): the teacher "
                 "is the base, the student the base with RoPE/CoPE at --student-context-length.")
        group.add_argument(
            "--pretrained", default=None,
            help="Weights the student starts from (tag or file). Default: the teacher's weights (text tower "
                 "without positions, vision tower). In TULIP's form: the teacher's weights.")
        group.add_argument(
            "--teacher-model", default=None,
            help="The frozen 77-token teacher (e.g. ViT-L-14-quickgelu). It reads the first 77 tokens of the "
                 "student's ids; its image tower is used for validation only. Required unless --teacher-cache "
                 "or TULIP's form.")
        group.add_argument(
            "--teacher-pretrained", default="",
            help="Weights of the teacher: an open_clip tag (e.g. openai) or a checkpoint path.")
        group.add_argument(
            "--teacher-cache", default=None,
            help="Folder of precomputed teacher embeddings (scripts/precompute_teacher_embeddings.py): the "
                 "teacher does not run during training. Refused when it does not match --teacher-model / "
                 "--teacher-pretrained (name, checkpoint sha256, tokenizer length) or the data's caption field; "
                 "embeddings of another width (e.g. an LLM's) are reached through a learned linear map.")
        group.add_argument(
            "--distill-loss", type=parse_loss_weights, default=None,
            help="Loss between student and teacher projected text features: cosine (1 - mean cosine "
                 "similarity), mse (mean squared error) or l2 (mean euclidean distance), or a weighted sum such "
                 "as 'cosine=1,mse=0.5'. Default: cosine.")
        _position_flag(group, self.position)
        _cope_impl_flag(group)
        tulip_form.add_spellings(parser, self.name)

    def foreign_flags(self) -> Dict[str, str]:
        hints = {flag: f"TULIP's stage-2 flag: use {FinetuneFlags(self.position).prog}"
                 for flag in tulip_form.STAGE2_SPELLINGS if flag not in tulip_form.STAGE1_SPELLINGS}
        return {**_OLD_OPEN_CLIP, **_other_stage_flags(self, FinetuneFlags(self.position)), **hints}

    def translate(self, args) -> None:
        tulip_form.translate_distill(args, self, DISTILL_LOSSES)

    def check_run(self, args) -> None:
        if not (args.teacher_model or args.teacher_cache):
            self.error("stage 1 needs a teacher: --teacher-model (run live) or --teacher-cache (precomputed), or "
                       "TULIP's form (--model <base> --student-context-length 248)")
        if args.teacher_cache and not os.path.isdir(args.teacher_cache):
            self.error(f"--teacher-cache {args.teacher_cache}: no such folder (write one with "
                       "scripts/precompute_teacher_embeddings.py)")
        from training_ext.engine import preflight
        student = preflight.require_model(args.model, "--model", self.error)
        teacher = preflight.require_model(args.teacher_model, "--teacher-model", self.error) if args.teacher_model \
            else None
        text = (student or {}).get("text_cfg")
        if text is not None:
            self._check_student(args, student, teacher, preflight)
        preflight.check_cope_impl(args, student, self.error)
        preflight.check_weights(args.model, args.pretrained, "--pretrained", self.error)
        if args.teacher_model:
            preflight.check_weights(args.teacher_model, args.teacher_pretrained, "--teacher-pretrained", self.error)
        if not args.pretrained:
            args.flag_notes.append(
                f"student: no --pretrained, so it starts from the teacher's weights ({args.teacher_model}, "
                f"{args.teacher_pretrained or 'no --teacher-pretrained: random'}): text tower without positions, "
                f"vision tower" if args.teacher_model else
                "student: no --pretrained and no --teacher-model to start from: random initial weights")
        args.pretrained = args.pretrained or ""
        preflight.check_common(args, self.error, text_only_train=True)

    def _check_student(self, args, student: dict, teacher, preflight) -> None:
        """Relative positions and a longer context than the teacher; the same output width as the teacher."""
        text = student["text_cfg"]
        kind = text.get("pos_embed_type")
        context = args.force_context_length or text.get("context_length", preflight.STOCK_CONTEXT)
        base = args.teacher_model or tulip_form.base_of(args.model) or args.model
        position = args.position or self.position
        if kind == "context" or text.get("hf_model_name"):
            self.error(f"--model {args.model} is a Hugging Face text tower ({text.get('hf_model_name')}) reading "
                       f"{context} tokens with its own positions: stage 1 distils into RoPE or CoPE positions, "
                       f"which it cannot take; fine-tune it on long captions with stage 2 (python -m "
                       f"training_ext.main_context_finetune_rope --model {args.model})")
        if kind not in POSITIONS:
            self.error(f"--model {args.model} has {preflight.describe_text_tower(text, context)}: stage 1's "
                       f"student needs relative positions (RoPE or CoPE) and a longer context than the teacher; "
                       f"{self._suggest(base, position, preflight)}")
        if args.position and args.position != kind:
            self.error(f"--position {args.position} contradicts --model {args.model} ({kind.upper()}); drop "
                       f"--position or use {self._suggest(base, args.position, preflight)}")
        if teacher is None or args.teacher_cache:  # the cache's own header is checked against the teacher later
            return
        teacher_context = teacher["text_cfg"].get("context_length", preflight.STOCK_CONTEXT)
        if context <= teacher_context:
            self.error(f"--model {args.model} reads {context} tokens, no more than the teacher {args.teacher_model} "
                       f"({teacher_context}): nothing to distil into; {self._suggest(base, kind, preflight)}")
        if student.get("embed_dim") != teacher.get("embed_dim"):
            self.error(f"--model {args.model} outputs {student.get('embed_dim')}-d features, the teacher "
                       f"{args.teacher_model} {teacher.get('embed_dim')}-d: the distillation loss compares them; "
                       f"build the student from the teacher's base ({self._suggest(base, kind, preflight)})")

    @staticmethod
    def _suggest(base: str, position: str, preflight) -> str:
        name = f"{base}-{position}-{tulip_form.DEFAULT_STUDENT_CONTEXT}"
        if preflight.model_config(name) is not None:
            return f"use --model {name} (or TULIP's form: --model {base} --student-context-length 248)"
        return f"use TULIP's form --model {base} --student-context-length 248 (it registers {name})"


def siglip_needs_bias(model: str) -> str:
    """The refusal of --siglip for a model without a logit bias."""
    return (f"--siglip: --model {model} has no logit bias (its config sets no init_logit_bias), which SigLIP's "
            "sigmoid loss needs; use a SigLIP-family model (e.g. ViT-B-16-SigLIP2-rope-248) or drop --siglip")


class FinetuneFlags(StageFlags):
    name = "finetune"
    description = "Stage 2: fine-tune the whole CLIP (distilled text tower + image tower) on long captions."

    def __init__(self, position: str = "rope"):
        self.position = position
        self.module = f"training_ext.main_context_finetune_{position}"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("stage 2: context fine-tuning (this project's flags)")
        group.add_argument(
            "--model", default=None,
            help="The CLIP that fine-tunes, with a long-context text tower: the stage-1 student's config (e.g. "
                 "ViT-L-14-rope-248), a Long-CLIP or uniform config (ViT-L-14-longclip-248), or in TULIP's form "
                 "the base (ViT-L-14). A stock 77-token CLIP needs --allow-plain-clip.")
        group.add_argument(
            "--pretrained", default=None,
            help="Weights of the vision tower and logit scale (and of the text tower without "
                 "--student-checkpoint): a tag (e.g. openai) or a file.")
        group.add_argument(
            "--student-checkpoint", default=None,
            help="Stage-1 checkpoint whose text tower (distilled text projection included) replaces the text "
                 "tower built from --pretrained. Its saved model_cfg must fit --model.")
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
        group.add_argument(
            "--recipe", choices=tulip_form.RECIPES, default=None,
            help="'corrected' (default): train at the student's context with its distilled text projection. "
                 "'tulip-original': TULIP's stage 2, trained at --extended-context-length with a dynamic-NTK RoPE "
                 "base (--scaling-factor, saved in the model config) and the original CLIP text projection.")
        group.add_argument(
            "--allow-plain-clip", action="store_true", default=False,
            help="Fine-tune a stock CLIP text tower (learned absolute positions, 77 tokens) as it is; without this "
                 "flag stage 2 refuses one, since that is not TULIP's stage 2.")
        _position_flag(group, self.position)
        _cope_impl_flag(group)
        tulip_form.add_spellings(parser, self.name)

    def foreign_flags(self) -> Dict[str, str]:
        return {**_OLD_OPEN_CLIP, **_other_stage_flags(self, DistillFlags(self.position))}

    def translate(self, args) -> None:
        tulip_form.translate_finetune(args, self)

    def check_arguments(self, args) -> None:
        if args.short_caption_weight < 0:
            self.error(f"--short-caption-weight must be >= 0, got {args.short_caption_weight}")
        if args.pcm_components < 1:
            self.error(f"--pcm-components must be >= 1, got {args.pcm_components}")
        if not 0.0 <= args.label_smoothing < 1.0:
            self.error(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
        if args.short_caption_loss == "pcm" and args.short_caption_weight == 0:
            self.error("--short-caption-loss pcm needs a --short-caption-weight above 0 (Long-CLIP uses 1)")
        if args.short_caption_loss == "pcm":
            self._check_pcm_batch(args)
        self._check_loss_flags(args)
        processes = world_size_from_env()
        pairs = args.batch_size * args.accum_freq * processes
        if pairs < 2:
            # ClipLoss gathers features across processes, and the cached-gradient step concatenates the
            # --accum-freq micro-batches: one pair in all gives a 1x1 logit matrix, a loss of exactly 0.
            self.error(f"stage 2's contrastive loss needs at least 2 image-caption pairs per step; --batch-size "
                       f"{args.batch_size} x --accum-freq {args.accum_freq} x {processes} process(es) gives "
                       f"{pairs}: " + ("the sigmoid loss would see no negative pair"
                                       if args.siglip else "the loss would be exactly 0")
                       + " while weight decay still changed the weights. Raise --batch-size or --accum-freq")

    def _check_loss_flags(self, args) -> None:
        """--siglip (open_clip's SigLipLoss) takes none of the softmax loss's options, and --loss-dist-impl is
        SigLipLoss's only: each such flag would be ignored."""
        if not args.siglip:
            if args.loss_dist_impl is not None:
                self.error(f"--loss-dist-impl {args.loss_dist_impl} picks how SigLIP's sigmoid loss exchanges "
                           "features between processes; without --siglip stage 2 runs the softmax CLIP loss (add "
                           "--siglip or drop the flag)")
            return
        softmax_only = [flag for flag, given in (("--local-loss", args.local_loss),
                                                 ("--gather-with-grad", args.gather_with_grad),
                                                 ("--label-smoothing", args.label_smoothing != 0.0)) if given]
        if softmax_only:
            self.error(f"{', '.join(softmax_only)} with --siglip: these configure the softmax CLIP loss (its "
                       "all-gather and cross-entropy targets); SigLIP's sigmoid loss passes text features between "
                       "neighbouring processes itself (--loss-dist-impl bidir/shift/reduce/gather) and has no "
                       "label smoothing. Drop them, or drop --siglip")
        if args.loss_dist_impl not in (None, "bidir", "shift", "reduce", "gather"):
            self.error(f"--loss-dist-impl {args.loss_dist_impl}: SigLIP's loss knows bidir (default), shift, reduce "
                       "and gather")

    def _check_pcm_batch(self, args) -> None:
        """Refuse a PCM loss that equals the CLIP loss on every step. The PCA runs on each process's image features
        of the step (finetune_losses: --batch-size x --accum-freq of them, since the step computes the loss over
        the accumulated batch; other processes' features are gathered only afterwards). B centred features have
        rank at most B - 1, so with --pcm-components k >= B - 1 the rank-k reconstruction is the features
        themselves, exactly."""
        seen, components = args.batch_size * args.accum_freq, args.pcm_components
        if seen <= components + 1:
            self.error(f"--short-caption-loss pcm with --pcm-components {components}: the PCA sees --batch-size "
                       f"{args.batch_size} x --accum-freq {args.accum_freq} = {seen} image features per step and "
                       f"process; centred, they have rank at most {seen - 1} <= {components}, so the "
                       f"{components}-component reconstruction is exact and the PCM loss equals the plain CLIP loss. "
                       f"Give --batch-size x --accum-freq of at least {components + 2}"
                       + (f", or --pcm-components of at most {seen - 2}" if seen >= 3 else ""))

    def check_run(self, args) -> None:
        from training_ext.engine import preflight
        config = preflight.require_model(args.model, "--model", self.error)
        text = (config or {}).get("text_cfg")
        width = (config or {}).get("embed_dim")
        if args.short_caption_loss == "pcm" and width and args.pcm_components >= width:
            # the features live in `width` dimensions: k >= width components span every batch's features
            self.error(f"--short-caption-loss pcm with --pcm-components {args.pcm_components}: --model {args.model} "
                       f"has {width}-d image features, so {args.pcm_components} components reconstruct every batch "
                       f"exactly and the PCM loss equals the plain CLIP loss; give --pcm-components below {width}")
        if text is not None:
            self._check_model(args, text, preflight)
        if args.siglip and config is not None and config.get("init_logit_bias") is None:
            # a model without one is checked once built (FinetuneStage.build_models)
            self.error(siglip_needs_bias(args.model))
        preflight.check_cope_impl(args, config, self.error)
        preflight.check_weights(args.model, args.pretrained, "--pretrained", self.error)
        args.pretrained = args.pretrained or ""
        if args.student_checkpoint:
            preflight.check_weights_file(args.student_checkpoint, "--student-checkpoint", self.error)
            self._check_student_checkpoint(args, config, preflight)
        elif (text or {}).get("pos_embed_type") in POSITIONS:
            args.flag_notes.append("no --student-checkpoint: the text tower is the one --pretrained gives "
                                   "(not distilled)")
        preflight.check_common(args, self.error)

    def _check_model(self, args, text: dict, preflight) -> None:
        kind = text.get("pos_embed_type")
        context = args.force_context_length or text.get("context_length", preflight.STOCK_CONTEXT)
        if args.position and kind in POSITIONS and args.position != kind:
            self.error(f"--position {args.position} contradicts --model {args.model} ({kind.upper()}); drop "
                       "--position or give the matching model")
        plain = kind is None and not text.get("hf_model_name") and context <= preflight.STOCK_CONTEXT
        if plain and not args.allow_plain_clip:
            position = args.position or self.position
            self.error(f"--model {args.model} has {preflight.describe_text_tower(text, context)} (a stock CLIP): "
                       f"stage 2 fine-tunes a long-context text tower. Give the stage-1 student: --model "
                       f"{args.model}-{position}-248 --student-checkpoint <stage-1 checkpoint> (TULIP's form: "
                       f"--model {args.model} --student-model <checkpoint>), or a Long-CLIP config "
                       f"({args.model}-longclip-248); to fine-tune the 77-token CLIP as it is, pass "
                       "--allow-plain-clip")

    def _check_student_checkpoint(self, args, config, preflight) -> None:
        """The checkpoint's saved model_cfg must describe the text tower --model builds (the stage-1 student's
        shape under --recipe tulip-original), and its activation must be the model's."""
        saved = preflight.saved_model_config(args.student_checkpoint)
        if not saved or config is None:
            args.flag_notes.append(f"--student-checkpoint {args.student_checkpoint}: no saved model_cfg; its fit is "
                                   "checked tensor by tensor when it is loaded")
            return
        expected_name = args.student_config or args.model
        expected = preflight.text_signature(preflight.model_config(expected_name) or config)
        if args.force_context_length and not args.student_config:
            expected["context_length"] = args.force_context_length
        found = preflight.text_signature(saved)
        if found["pos_embed_type"] == "rope" and (expected["context_length"] or 0) > (found["context_length"] or 0):
            # RoPE holds no per-position tensor: a student trained shorter fine-tunes at a longer context, its
            # positions past the trained length rotating further (position scaling 'none')
            found["context_length"] = expected["context_length"]
        if found != expected:
            keys = list(found) + [key for key in expected if key not in found]
            differing = ", ".join(f"{key} {found.get(key)} vs {expected.get(key)}" for key in keys
                                  if found.get(key) != expected.get(key))
            fits = preflight.configs_with_text(found, prefer=tulip_form.base_of(expected_name) or expected_name)
            fix = (f"use --model {fits[0]}" if fits else
                   "no registered config has that text tower; register one with open_clip_ext.register_variant")
            tulip = (" (TULIP's form: --student-context-length / the *_cope entry point to match it)"
                     if args.tulip_form else "")
            self.error(f"--student-checkpoint {args.student_checkpoint} was trained as a different text tower than "
                       f"--model {expected_name} builds ({differing}, checkpoint vs model); {fix}{tulip}")
        self._check_activation(args, config, saved, preflight)

    def _check_activation(self, args, config: dict, saved: dict, preflight) -> None:
        from open_clip_ext.convert import pretrained_uses_quick_gelu
        student_quick = bool(saved.get("quick_gelu"))
        model_quick = bool(args.force_quick_gelu or config.get("quick_gelu")
                           or pretrained_uses_quick_gelu(args.model, args.pretrained))
        if student_quick == model_quick:
            return
        if student_quick and not args.pretrained:
            args.force_quick_gelu = True
            args.flag_notes.append(f"--student-checkpoint was trained with QuickGELU: the model uses QuickGELU "
                                   "(--force-quick-gelu)")
            return
        names = {True: "QuickGELU", False: "GELU"}
        alternative = " (or --force-quick-gelu)" if student_quick else ""
        self.error(f"--student-checkpoint {args.student_checkpoint} was trained with {names[student_quick]}, but "
                   f"--model {args.model} with --pretrained {args.pretrained or '(none)'} computes with "
                   f"{names[model_quick]}: the text tower would run with another activation than it learnt. Give "
                   f"--pretrained weights of the student's teacher{alternative}")
