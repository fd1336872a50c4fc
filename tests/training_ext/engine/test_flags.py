"""The stages' command lines: open_clip_train's flags honoured or refused, TULIP's form translated, and every
mistake detectable from flags and files reported as one error line (exit status 2) before anything is built."""
import argparse
import inspect
import os
import re
from pathlib import Path

import open_clip
import open_clip_train.distributed
import open_clip_train.params
import pytest
import torch

from support.training_helpers import STUDENT, TEACHER, save_stock_teacher, write_csv
from training_ext import (main_context_finetune_cope, main_context_finetune_rope, main_distill_cope,
                          main_distill_rope)
from training_ext.engine import params
from training_ext.engine.params import FLAG_POLICY, HONOURED, UsageError, stage_policy

ROOT = Path(__file__).resolve().parents[3]
STAGES = ("distill", "finetune")


def _open_clip_train_flags():
    """Every flag open_clip_train's parser defines (taken from the parser its parse_args builds)."""
    taken = []

    def take(parser, *args, **kwargs):
        taken.append(parser)
        raise SystemExit(0)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = take
    try:
        with pytest.raises(SystemExit):
            open_clip_train.params.parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = original
    return {flag: action.dest for action in taken[0]._actions for flag in action.option_strings
            if flag.startswith("--") and flag != "--help"}


def _sources(*modules) -> str:
    paths = [p for folder in ("engine", "stages", "data") for p in (ROOT / "training_ext" / folder).glob("*.py")]
    return "\n".join([p.read_text() for p in paths] + [inspect.getsource(m) for m in modules])


def test_every_open_clip_train_flag_is_honoured_or_refused_by_each_stage():
    flags = _open_clip_train_flags()
    assert set(flags) == set(FLAG_POLICY), "place every open_clip_train flag in engine.params.FLAG_POLICY"
    for stage in STAGES:
        honoured, refused = stage_policy(stage)
        assert set(honoured) | set(refused) == set(flags) and not set(honoured) & set(refused)
        assert all(len(reason) > 20 for reason in refused.values())
    # "honoured" is a claim about the code: the engine (or the open_clip_train function it calls) reads the flag
    code = _sources(open_clip_train.distributed)
    always_on = {"--save-most-recent"}  # epoch_latest.pt is written at every save
    for flag in set(stage_policy("distill")[0]) | set(stage_policy("finetune")[0]):
        dest = flags[flag]
        if flag in always_on:
            continue
        assert re.search(rf"args\.{dest}\b|[\"']{dest}[\"']", code), f"{flag} is listed as honoured but never read"
    assert "LATEST_NAME" in (ROOT / "training_ext/engine/checkpoint.py").read_text()


def _error(capsys, parse, argv) -> str:
    with pytest.raises(UsageError) as stop:
        parse(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ": error: " in err[0], err  # one argparse-style line, no usage dump
    return str(stop.value)


@pytest.fixture
def data(tmp_path):
    return {"train": write_csv(str(tmp_path / "train"), rows=4, images=False),
            "teacher": save_stock_teacher(str(tmp_path / "teacher.pt")), "logs": str(tmp_path / "logs"),
            "tmp": tmp_path}


def _stage1(data, *extra):
    return ["--model", STUDENT, "--teacher-model", TEACHER, "--train-data", data["train"], "--logs", data["logs"],
            "--name", "run", *extra]


def _stage2(data, *extra):
    return ["--model", STUDENT, "--train-data", data["train"], "--logs", data["logs"], "--name", "run",
            "--batch-size", "4", *extra]


def _save_student(path, name=STUDENT, **cfg_changes):
    torch.manual_seed(7)
    model = open_clip.create_model(name)
    torch.save({"epoch": 1, "state_dict": model.state_dict(), "model_cfg": {**open_clip.get_model_config(name),
                                                                            **cfg_changes}}, path)
    return path


def test_refused_open_clip_train_flags_name_their_reason(capsys, data):
    parse1, parse2 = main_distill_rope.parse_args, main_context_finetune_rope.parse_args
    assert "training_ext.eval --imagenet" in _error(capsys, parse2, _stage2(data, "--imagenet-val", "x"))
    assert "--zeroshot-frequency" in _error(capsys, parse1, _stage1(data, "--zeroshot-frequency", "1"))
    assert "teacher's, frozen" in _error(capsys, parse1, _stage1(data, "--lock-image"))
    assert "no negatives" in _error(capsys, parse1, _stage1(data, "--gather-with-grad"))
    assert "stage 2 takes --siglip" in _error(capsys, parse1, _stage1(data, "--siglip"))
    assert "logit bias" in _error(capsys, parse2, _stage2(data, "--siglip"))  # honoured, but tiny-clip has none
    assert "--teacher-model" in _error(capsys, parse1, _stage1(data, "--distill-model", "ViT-B-32"))
    args = parse2(_stage2(data, "--lock-image", "--gather-with-grad", "--allow-plain-clip"))  # honoured in stage 2
    assert args.lock_image and args.gather_with_grad


def test_torchcompile_is_accepted_for_rope_and_cope_towers(data):
    # CoPE's attention is compile-safe (tests/open_clip_ext/test_cope_compile.py compares it with eager)
    assert main_distill_rope.parse_args(_stage1(data, "--torchcompile")).torchcompile
    cope = _stage1(data, "--torchcompile") + ["--model", "tiny-clip-cope-248"]
    assert main_distill_cope.parse_args(cope).torchcompile


def test_cope_impl_is_checked_against_the_model_and_machine_before_anything_is_built(capsys, data, monkeypatch):
    """The Triton kernels are opt-in (--cope-impl triton, or OPEN_CLIP_EXT_COPE_IMPL=triton where the flag is not
    given); a request that cannot run here, or the flag on a tower without CoPE, is one error line with the fix."""
    from open_clip_ext.kernels import dispatch
    from training_ext.stages import flags

    assert flags.COPE_IMPLS == dispatch.COPE_IMPLS  # spelt out twice: flags.py imports no torch
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    parse1, parse2 = main_distill_cope.parse_args, main_context_finetune_cope.parse_args
    cope1, cope2 = _stage1(data, "--model", "tiny-clip-cope-248"), _stage2(data, "--model", "tiny-clip-cope-248")
    assert parse1(cope1).cope_impl is None  # the library's default: the PyTorch op
    assert parse2(cope2 + ["--cope-impl", "autograd"]).cope_impl == "autograd"
    message = _error(capsys, parse1, cope1 + ["--cope-impl", "triton", "--device", "cpu"])
    assert message.startswith("--cope-impl triton: ") and message.endswith("use --cope-impl torch")
    if dispatch.triton_problem() is None:  # with Triton installed, what stops it is the device
        assert "CUDA only, not on cpu" in message
    assert "--cope-impl triton with --torchcompile" in _error(capsys, parse2, cope2 + ["--cope-impl", "triton",
                                                                                         "--torchcompile"])
    message = _error(capsys, main_distill_rope.parse_args, _stage1(data, "--cope-impl", "torch"))
    assert "--cope-impl torch applies to CoPE text towers" in message and "RoPE positions" in message
    message = _error(capsys, parse2, cope2 + ["--cope-impl", "flash"])
    assert "--cope-impl" in message and "'flash'" in message
    monkeypatch.setenv(dispatch.ENV_VAR, "flash")
    assert f"{dispatch.ENV_VAR}='flash'" in _error(capsys, parse2, cope2)
    assert parse2(cope2 + ["--cope-impl", "torch"]).cope_impl == "torch"  # the flag wins over the environment
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    assert _error(capsys, parse1, cope1 + ["--device", "cpu"]).startswith(f"{dispatch.ENV_VAR}=triton: ")


@pytest.mark.slow  # one training step
def test_cope_impl_reaches_the_student_and_the_run_log_names_it(data, monkeypatch):
    monkeypatch.delenv("OPEN_CLIP_EXT_COPE_IMPL", raising=False)
    argv = _stage1(data, "--model", "tiny-clip-cope-248", "--cope-impl", "autograd", "--batch-size", "4",
                   "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--workers", "0", "--dataset-type", "csv")
    state = main_distill_cope.run(main_distill_cope.parse_args(argv))
    assert {block.attn.cope_impl for block in state.model.text.transformer.resblocks} == {"autograd"}
    log = (Path(data["logs"]) / "run" / "out.log").read_text()
    assert log.count("CoPE attention: ") == 1
    assert "CoPE attention: op by op through autograd, CoPE.forward (--cope-impl autograd)" in log


def test_unknown_model_names_give_close_matches(capsys, data):
    message = _error(capsys, main_distill_rope.parse_args, _stage1(data, "--model", "tiny-clip-rope-24"))
    assert "--model tiny-clip-rope-24" in message and "tiny-clip-rope-248" in message
    message = _error(capsys, main_distill_rope.parse_args, _stage1(data, "--teacher-model", "tiny-clp"))
    assert "--teacher-model tiny-clp" in message and "tiny-clip" in message


def test_an_existing_run_name_needs_resume(capsys, data):
    run = Path(data["logs"]) / "run"
    run.mkdir(parents=True)
    (run / "out.log").write_text("earlier run\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "epoch_1.pt").write_bytes(b"")  # a run with a checkpoint (one without: test_run_output)
    message = _error(capsys, main_distill_rope.parse_args, _stage1(data))
    assert "--name run" in message and "--resume latest" in message
    assert main_distill_rope.parse_args(_stage1(data, "--resume", "latest")).resume == "latest"


def test_missing_or_unreadable_files_are_named(capsys, data):
    parse1, parse2 = main_distill_rope.parse_args, main_context_finetune_rope.parse_args
    missing = str(data["tmp"] / "nope.pt")
    assert "--student-checkpoint" in _error(capsys, parse2, _stage2(data, "--student-checkpoint", missing))
    assert _error(capsys, parse2, _stage2(data, "--student-model", missing)).startswith("--student-model")
    assert "not a file" in _error(capsys, parse2, _stage2(data, "--student-checkpoint", str(data["tmp"])))
    cut = data["tmp"] / "cut.pt"
    cut.write_bytes(b"PK\x03\x04" + bytes(60))  # a zip archive cut before its directory
    for flag in ("--student-checkpoint", "--pretrained"):
        message = _error(capsys, parse2, _stage2(data, flag, str(cut)))
        assert message.startswith(f"{flag} {cut}: truncated or not a torch checkpoint"), message
    message = _error(capsys, parse1, _stage1(data, "--pretrained", missing))
    assert "--pretrained" in message and "no such file" in message and "not a pretrained tag" in message
    assert "--teacher-pretrained" in _error(capsys, parse1, _stage1(data, "--teacher-pretrained", "opnai"))
    assert "--resume" in _error(capsys, parse1, _stage1(data, "--resume", missing))
    assert "--train-data" in _error(capsys, parse1, _stage1(data, "--train-data", str(data["tmp"] / "x.csv")))
    assert "--teacher-cache" in _error(capsys, parse1, _stage1(data, "--teacher-cache", missing))
    if os.geteuid() != 0:  # root reads any file
        locked = data["tmp"] / "locked.pt"
        locked.write_bytes(b"x")
        locked.chmod(0)
        assert "cannot be read" in _error(capsys, parse1, _stage1(data, "--pretrained", str(locked)))


def test_a_student_checkpoint_that_does_not_fit_names_the_right_model(capsys, data):
    cope = _save_student(str(data["tmp"] / "cope.pt"), "tiny-clip-cope-248")
    message = _error(capsys, main_context_finetune_rope.parse_args, _stage2(data, "--student-checkpoint", cope))
    assert "use --model tiny-clip-cope-248" in message and "pos_embed_type cope vs rope" in message
    fits = main_context_finetune_rope.parse_args(_stage2(data, "--student-checkpoint", cope, "--model",
                                                        "tiny-clip-cope-248"))
    assert fits.student_checkpoint == cope
    # trained with QuickGELU, but --pretrained gives GELU weights: the text tower would run another activation
    quick = _save_student(str(data["tmp"] / "quick.pt"), quick_gelu=True)
    message = _error(capsys, main_context_finetune_rope.parse_args,
                     _stage2(data, "--student-checkpoint", quick, "--pretrained", data["teacher"]))
    assert "QuickGELU" in message
    # without --pretrained the model follows the checkpoint's activation
    assert main_context_finetune_rope.parse_args(_stage2(data, "--student-checkpoint", quick)).force_quick_gelu


def _no_wandb_login(monkeypatch, tmp_path):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.chdir(tmp_path)


def test_wandb_without_a_login_logs_offline_with_a_warning(capsys, monkeypatch, data):
    _no_wandb_login(monkeypatch, data["tmp"])
    args = main_distill_rope.parse_args(_stage1(data, "--report-to", "wandb"))
    assert os.environ["WANDB_MODE"] == "offline"
    assert "warning: wandb: no login found" in capsys.readouterr().err
    assert any("wandb sync" in note for note in args.flag_notes)  # logged again when the run starts


def test_wandb_credentials_are_found_where_wandb_reads_them(monkeypatch, data):
    from training_ext.engine.preflight import wandb_credentials
    _no_wandb_login(monkeypatch, data["tmp"])
    assert wandb_credentials() is None
    (data["tmp"] / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    assert wandb_credentials() == str(data["tmp"] / "netrc")
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    assert wandb_credentials() == "WANDB_API_KEY"


def test_report_to_names_are_checked(capsys, data):
    message = _error(capsys, main_distill_rope.parse_args, _stage1(data, "--report-to", "wandbb"))
    assert "unknown logger wandbb" in message


def test_unknown_flags_that_are_another_spelling_say_what_to_give(capsys, data):
    parse1, parse2 = main_distill_rope.parse_args, main_context_finetune_rope.parse_args
    message = _error(capsys, parse1, _stage1(data, "--student-model", "x.pt"))
    assert "TULIP's stage-2 flag" in message and "main_context_finetune_rope" in message
    assert "stage 2" in _error(capsys, parse1, _stage1(data, "--short-caption-weight", "0.5"))
    assert "stage 1" in _error(capsys, parse2, _stage2(data, "--teacher-model", TEACHER))
    assert "spelled --batch-size" in _error(capsys, parse1, _stage1(data, "--batch_size", "4"))
    assert "--pretrained openai" in _error(capsys, parse1, _stage1(data, "--openai-pretrained"))
    assert "did you mean --distill-loss" in _error(capsys, parse1, _stage1(data, "--distil-loss", "cosine"))


def test_stage1_refuses_a_student_without_relative_positions_or_a_longer_context(capsys, data):
    parse = main_distill_rope.parse_args
    message = _error(capsys, parse, _stage1(data, "--model", TEACHER))
    assert "learned absolute positions, 77 tokens" in message and "--model tiny-clip-rope-248" in message
    assert "relative positions" in _error(capsys, parse, _stage1(data, "--model", "tiny-clip-longclip-248"))
    message = _error(capsys, parse, _stage1(data, "--force-context-length", "64"))
    assert "reads 64 tokens, no more than the teacher" in message
    assert "contradicts" in _error(capsys, parse, _stage1(data, "--position", "cope"))


def test_stage2_refuses_a_plain_clip_unless_asked(capsys, data):
    parse = main_context_finetune_rope.parse_args
    message = _error(capsys, parse, _stage2(data, "--model", TEACHER))
    assert "--allow-plain-clip" in message and "--model tiny-clip-rope-248 --student-checkpoint" in message
    assert parse(_stage2(data, "--model", TEACHER, "--allow-plain-clip")).model == TEACHER
    for absolute in ("tiny-clip-longclip-248", "tiny-clip-uniform-248"):  # long-context absolute positions train
        assert parse(_stage2(data, "--model", absolute)).model == absolute


def test_stage2_refuses_a_step_of_one_pair(capsys, monkeypatch, data):
    parse = main_context_finetune_rope.parse_args
    message = _error(capsys, parse, _stage2(data, "--batch-size", "1"))
    assert "at least 2 image-caption pairs" in message and "exactly 0" in message
    assert parse(_stage2(data, "--batch-size", "1", "--accum-freq", "2")).accum_freq == 2  # micro-batches concatenate
    monkeypatch.setenv("WORLD_SIZE", "2")  # features are gathered across processes
    assert parse(_stage2(data, "--batch-size", "1")).batch_size == 1
    assert main_distill_rope.parse_args(_stage1(data, "--batch-size", "1")).batch_size == 1  # not contrastive


def test_stage1_tulip_form_translates_to_teacher_and_student(data):
    args = main_distill_rope.parse_args(
        ["--model", TEACHER, "--pretrained", data["teacher"], "--context-length", "77", "--student-context-length",
         "248", "--loss-type", "mse", "--train-data", data["train"], "--logs", data["logs"]])
    assert (args.model, args.teacher_model, args.teacher_pretrained) == (STUDENT, TEACHER, data["teacher"])
    assert args.pretrained == "" and args.distill_loss == {"mse": 1.0} and args.tulip_form
    assert any("starts from the teacher" in note for note in args.flag_notes)
    cope = main_distill_cope.parse_args(["--model", TEACHER, "--student-context-length", "248",
                                         "--train-data", data["train"], "--logs", data["logs"]])
    assert cope.model == "tiny-clip-cope-248" and cope.distill_loss == {"cosine": 1.0}
    assert any("--loss-type left out: cosine" in note for note in cope.flag_notes)
    longer = main_distill_rope.parse_args(["--model", TEACHER, "--student-context-length", "300",
                                           "--train-data", data["train"], "--logs", data["logs"]])
    assert longer.model == "tiny-clip-rope-300"
    assert open_clip.get_model_config("tiny-clip-rope-300")["text_cfg"]["context_length"] == 300


def test_stage1_forms_combined_inconsistently_say_which_flag_wins(capsys, data):
    parse = main_distill_rope.parse_args
    tulip = ["--train-data", data["train"], "--logs", data["logs"]]
    message = _error(capsys, parse, ["--model", TEACHER, "--context-length", "77", "--teacher-model",
                                     "tiny-clip-uniform-248"] + tulip)
    assert "both name the teacher" in message and "Drop --teacher-model" in message
    message = _error(capsys, parse, ["--model", STUDENT, "--teacher-model", TEACHER, "--student-context-length",
                                     "512"] + tulip)
    assert "fixes the student's context at 248" in message
    assert "--model tiny-clip --student-context-length 512" in message
    message = _error(capsys, parse, ["--model", TEACHER, "--context-length", "77", "--pretrained", "opnai"] + tulip)
    assert message.startswith("--pretrained opnai: no such file")
    assert "reads 77 tokens" in _error(capsys, parse, ["--model", TEACHER, "--context-length", "64"] + tulip)
    assert "disagree" in _error(capsys, parse, _stage1(data, "--loss-type", "mse", "--distill-loss", "cosine"))
    assert "stage 2's" in _error(capsys, parse, _stage1(data, "--loss-type", "clip_loss"))


def test_stage2_tulip_form_and_the_original_recipe(capsys, data):
    student = _save_student(str(data["tmp"] / "s1.pt"))
    tulip = ["--model", TEACHER, "--pretrained", data["teacher"], "--context-length", "77", "--student-context-length",
             "248", "--loss-type", "clip_loss", "--student-model", student, "--train-data", data["train"],
             "--logs", data["logs"], "--batch-size", "4"]
    args = main_context_finetune_rope.parse_args(tulip)
    assert (args.model, args.student_checkpoint, args.recipe) == (STUDENT, student, "corrected")
    original = main_context_finetune_rope.parse_args(tulip + ["--scaling-factor", "2"])
    assert original.recipe == "tulip-original" and original.extended_context_length == 231
    text_cfg = open_clip.get_model_config(original.model)["text_cfg"]
    ntk = (text_cfg["context_length"], text_cfg["rope_ntk_factor"], text_cfg["rope_ntk_trained_length"])
    assert ntk == (231, 2.0, 248)
    assert any("--extended-context-length left out: 231" in note for note in original.flag_notes)
    parse = main_context_finetune_rope.parse_args
    message = _error(capsys, parse, tulip + ["--recipe", "corrected", "--scaling-factor", "2"])
    assert "--recipe tulip-original" in message
    assert "dynamic NTK" in _error(capsys, main_context_finetune_cope.parse_args, tulip + ["--scaling-factor", "2"])
    without_weights = [a for a in tulip if a not in ("--pretrained", data["teacher"])]
    assert "--pretrained" in _error(capsys, parse, without_weights + ["--recipe", "tulip-original"])
    assert "CLIP loss" in _error(capsys, parse, tulip + ["--loss-type", "cosine"])


def test_help_lists_each_flag_once_with_this_stages_meaning(capsys):
    for parse, meaning in ((main_distill_rope.parse_args, "The student that trains"),
                           (main_context_finetune_cope.parse_args, "The CLIP that fine-tunes")):
        with pytest.raises(SystemExit) as stop:
            parse(["--help"])
        assert stop.value.code == 0
        shown = capsys.readouterr().out
        definitions = re.findall(r"^  (--[a-z0-9-]+)", shown, flags=re.M)
        assert len(definitions) == len(set(definitions)), "a flag is listed twice"
        assert meaning in shown and "Name of the vision backbone" not in shown
        assert shown.index("this project's flags") < shown.index("open_clip_train flags")
        assert "--logs-specs" in shown  # the torchrun note


def test_parser_is_open_clip_trains_own():
    parser = params.build_parser(main_distill_rope.FLAGS)
    theirs = _open_clip_train_flags()
    assert set(theirs) <= set(parser._option_string_actions)


def test_flags_that_would_do_nothing_are_refused_at_parsing(capsys, data, monkeypatch):
    """open_clip_train's own rules and flags that cannot act on the data given: one error line each, both stages."""
    from support.shard_fixtures import write_shard
    shards = "::".join(write_shard(str(data["tmp"] / f"{name}.tar"), [(f"{name}0", {"txt": b"a caption."})])
                       for name in "ab")
    wds = ["--train-data", shards, "--dataset-type", "webdataset", "--train-num-samples", "8", "--batch-size", "4"]
    for parse, argv in ((main_distill_rope.parse_args, _stage1), (main_context_finetune_rope.parse_args, _stage2)):
        message = _error(capsys, parse, argv(data, *wds, "--train-data-upsampling-factors", "1::2"))
        assert message.startswith("--train-data-upsampling-factors is only supported when sampling with replacement "
                                  "(with --dataset-resampled)")
        assert parse(argv(data, *wds, "--dataset-resampled", "--train-data-upsampling-factors", "1::2"))
        message = _error(capsys, parse, argv(data, *wds, "--dataset-resampled", "--train-data-upsampling-factors",
                                             "1::2::3"))
        assert "(2) and weights(3)" in message and "one number per '::'-separated source" in message
        message = _error(capsys, parse, argv(data, "--dataset-resampled"))
        assert message.startswith("--dataset-resampled samples webdataset shards with replacement")
        assert "an epoch would train no step" in _error(capsys, parse, argv(data, "--train-num-samples", "3"))
        assert "--momentum is an argument of timm optimizers" in _error(capsys, parse, argv(data, "--momentum", "0.9"))
        message = _error(capsys, parse, argv(data, "--opt", "timm/adamw", "--beta1", "0.9"))
        assert "--beta1 and --beta2 together" in message
        message = _error(capsys, parse, argv(data, "--val-data", shards, "--val-num-samples", "4"))
        assert "webdataset validation reads every sample" in message
    message = _error(capsys, main_context_finetune_rope.parse_args, _stage2(data, "--pretrained-image"))
    assert "timm's ImageNet weights" in message
    message = _error(capsys, main_distill_rope.parse_args, _stage1(data, "--force-custom-text"))
    assert "always built as open_clip's CustomTextCLIP" in message
