"""Both stages and eval on bidirectional (SigLIP-family) towers: a tiny SigLIP 2-like base (64 tokens, no causal mask,
'last' pooling, logit bias, a unigram tokenizer in Gemma's layout) distilled into its -rope-248 variant, fine-tuned
with SigLIP's sigmoid loss (--siglip) and evaluated. The worked example of README ("Which configs are supported")
runs here command by command, in-process, on the tokenizer shipped in tests/fixtures/siglip2_tiny."""
import importlib.util
import json
import logging
import math
import os
import shlex
from argparse import Namespace
from contextlib import nullcontext

import open_clip
import pytest
import torch
import torch.nn.functional as F

from support.data_prep_fixtures import load_script
from support.naive_towers import randomize_
from support.non_clip_tokenizers import save_tokenizer, siglip_config, unregister, vocab_size
from support.training_helpers import base_args, long_caption
from open_clip_ext.configs import register_model_config, register_variant
from training_ext import main_context_finetune_rope, main_distill_rope
from training_ext.data.teacher_cache import TeacherCache
from training_ext.stages import distill
from training_ext.stages.distill_stage import init_student_from_teacher
from training_ext.stages.finetune import ClipFeatures, clip_loss_for, finetune_losses, make_finetune_step
from training_ext.stages.finetune_stage import use_logit_bias
from training_ext.stages.text_inputs import TeacherInputs

precompute = load_script("precompute_teacher_embeddings")
FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "siglip2_tiny")
TRAIN = [long_caption(i, sentences=6) for i in range(32)] + [long_caption(200 + i, sentences=1) for i in range(32)]
HELD_OUT = [long_caption(100 + i, sentences=1) for i in range(16)]  # short captions no step trained on


@pytest.fixture(scope="module")
def siglip2(tmp_path_factory):
    """(teacher name, student name): a tiny SigLIP 2-like base and its RoPE variant, vocabulary of every caption."""
    folder = save_tokenizer(str(tmp_path_factory.mktemp("gemma")), "gemma", TRAIN + HELD_OUT)
    register_model_config("bidir-stages-siglip2", siglip_config(folder, "gemma", vocab_size(folder)))
    yield "bidir-stages-siglip2", register_variant("bidir-stages-siglip2", "rope", 248)
    unregister("bidir-stages-siglip2", "bidir-stages-siglip2-rope-248")


def naive_sigmoid_loss(image, text, scale, bias):
    """SigLIP's loss written out: -(1/B) sum_ij log sigmoid(z_ij (scale <x_i, y_j> + bias)), z = +1 on the
    diagonal, -1 elsewhere; float64, one pair at a time."""
    total = 0.0
    for i in range(len(image)):
        for j in range(len(text)):
            logit = scale * float(image[i].double() @ text[j].double()) + bias
            sign = 1.0 if i == j else -1.0
            total += math.log1p(math.exp(-sign * logit))  # -log sigmoid(sign * logit)
    return total / len(image)


def _finetune_args(**flags):
    args = Namespace(siglip=True, loss_dist_impl=None, rank=0, world_size=1, label_smoothing=0.0, local_loss=False,
                     gather_with_grad=False)
    vars(args).update(flags)
    return args


def test_siglip_loss_of_both_caption_terms_is_the_sigmoid_loss():
    torch.manual_seed(3)
    image, long, short = (F.normalize(torch.randn(5, 8), dim=-1) for _ in range(3))
    scale, bias = torch.tensor(7.0), torch.tensor(-2.5)
    loss = clip_loss_for(_finetune_args())
    assert isinstance(loss, open_clip.loss.SigLipLoss)
    terms = finetune_losses(image, long, short, scale, loss, 0.3, logit_bias=bias)
    assert terms["long_loss"].item() == pytest.approx(naive_sigmoid_loss(image, long, 7.0, -2.5), rel=1e-5)
    assert terms["short_loss"].item() == pytest.approx(naive_sigmoid_loss(image, short, 7.0, -2.5), rel=1e-5)
    assert terms["loss"].item() == pytest.approx(terms["long_loss"].item() + 0.3 * terms["short_loss"].item())
    # the bias matters: the softmax loss would not see it, the sigmoid loss does
    other = finetune_losses(image, long, short, scale, loss, 0.3, logit_bias=torch.tensor(0.0))
    assert abs(other["loss"].item() - terms["loss"].item()) > 1.0


def test_teacher_reads_its_own_tokenization_and_no_stage_trims_a_bidirectional_tower(tmp_path):
    """SigLIP's layout pads with its end id, Gemma's with 0: the teacher's ids equal its own tokenizer at 64 tokens,
    long captions cut with their end id last; both stages feed the student all 248 columns (padding attended)."""
    captions = TRAIN[:3] + HELD_OUT[:3]
    for layout in ("siglip", "gemma"):
        folder = save_tokenizer(str(tmp_path / layout), layout, captions)
        base = f"bidir-stages-{layout}-ids"
        register_model_config(base, siglip_config(folder, layout, vocab_size(folder)))
        student = register_variant(base, "rope", 248)
        try:
            teacher_tokenizer, student_tokenizer = open_clip.get_tokenizer(base), open_clip.get_tokenizer(student)
            inputs = TeacherInputs(student_tokenizer, teacher_tokenizer)
            student_ids, teacher_ids = inputs.split(inputs.data_tokenizer(captions))
            assert torch.equal(teacher_ids, teacher_tokenizer(captions)) and teacher_ids.shape[1] == 64
            assert torch.equal(student_ids, student_tokenizer(captions)) and student_ids.shape[1] == 248
            assert (teacher_ids[:3, -1] == 1).all() and (teacher_ids[:3] != 1).sum(1).min() == 63  # cut, end kept
            model = open_clip.create_model(student).eval()
            widths = []
            model.text.register_forward_pre_hook(lambda module, given: widths.append(given[0].shape[-1]))
            with torch.no_grad():
                distill.StudentTextFeatures(model)(student_ids)
                ClipFeatures(model)(torch.randn(6, 3, 32, 32), student_ids, student_ids)
            assert widths == [248, 248]  # one call for long + short: concatenated, never trimmed
        finally:
            unregister(base, student)


def test_stage1_brings_held_out_short_captions_to_the_teachers_embeddings(siglip2, tmp_path):
    """24 steps (3 epochs of 8 x 8 captions, lr 1e-2) of the real stage-1 command: the student's embedding of each
    of 16 held-out one-sentence captions reaches cosine >= 0.95 with the teacher's (from about 0.8 at the start,
    the teacher's weights without its position table)."""
    teacher_name, student_name = siglip2
    torch.manual_seed(7)
    teacher = randomize_(open_clip.create_model(teacher_name), scale=0.3).eval()
    torch.save({"state_dict": teacher.state_dict()}, tmp_path / "teacher.pt")
    with open(tmp_path / "train.csv", "w") as handle:
        handle.write("filepath\ttitle\n")
        handle.writelines(f"missing/{i}.png\t{caption}\n" for i, caption in enumerate(TRAIN))
    with torch.no_grad():
        target = teacher.encode_text(open_clip.get_tokenizer(teacher_name)(HELD_OUT))

    def cosines(student):
        with torch.no_grad():
            return F.cosine_similarity(student.eval().encode_text(open_clip.get_tokenizer(student_name)(HELD_OUT)),
                                       target)

    start = open_clip.create_model(student_name)
    init_student_from_teacher(start, teacher, teacher_name)
    argv = ["--model", student_name, "--teacher-model", teacher_name, "--teacher-pretrained",
            str(tmp_path / "teacher.pt")] + base_args(str(tmp_path / "logs"), "stage1", str(tmp_path / "train.csv"),
                                                      batch_size=8, epochs=3, extra=["--lr", "1e-2", "--wd", "0"])
    main_distill_rope.run(main_distill_rope.parse_args(argv))
    trained = open_clip.create_model(student_name, pretrained=str(tmp_path / "logs/stage1/checkpoints/epoch_3.pt"))
    assert cosines(start).min() < 0.9
    assert cosines(trained).min() >= 0.95

    # a teacher cache holds the same targets: the teacher's own 64 ids per caption, padding attended, untrimmed
    precompute.main(["--teacher-model", teacher_name, "--teacher-pretrained", str(tmp_path / "teacher.pt"), "--data",
                     str(tmp_path / "train.csv"), "--output", str(tmp_path / "cache"), "--no-progress"])
    cache = TeacherCache(str(tmp_path / "cache"))
    with torch.no_grad():
        own = teacher.encode_text(open_clip.get_tokenizer(teacher_name)(TRAIN))
    distances = (cache.embeddings(range(len(cache)))[:, None] - own[None]).norm(dim=-1)
    assert len(cache) == len(TRAIN) and distances.min(dim=1).values.max() < 1e-4
    assert sorted(distances.argmin(dim=1).tolist()) == list(range(len(TRAIN)))


def test_cached_gradient_step_trains_the_logit_bias_as_one_large_batch(siglip2):
    """--accum-freq 2 with --siglip: the cached-gradient step gives every parameter, the logit bias included, the
    gradient of the sigmoid loss over the whole batch."""
    _, student_name = siglip2
    torch.manual_seed(1)
    model = randomize_(open_clip.create_model(student_name), scale=0.3)
    tokenizer = open_clip.get_tokenizer(student_name)
    images, long_ids, short_ids = torch.randn(6, 3, 32, 32), tokenizer(TRAIN[:6]), tokenizer(HELD_OUT[:6])
    features, loss = ClipFeatures(model, logit_bias=True), clip_loss_for(_finetune_args())

    def gradients(micro_batches):
        model.zero_grad()
        make_finetune_step(features, features, loss, 0.5, "cpu", None, nullcontext, None, False)(micro_batches)
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    whole = gradients([(images, long_ids, short_ids)])
    halves = gradients([(images[:3], long_ids[:3], short_ids[:3]), (images[3:], long_ids[3:], short_ids[3:])])
    assert whole.keys() == halves.keys() and "logit_bias" in whole and whole["logit_bias"].abs() > 1e-4
    for name in whole:
        torch.testing.assert_close(halves[name], whole[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_siglip_base_without_siglip_keeps_its_bias_frozen_and_says_so(siglip2, caplog):
    _, student_name = siglip2
    model = open_clip.create_model(student_name)
    with caplog.at_level(logging.WARNING):
        use_logit_bias(model, Namespace(siglip=False, model=student_name), pytest.fail)
    assert not model.logit_bias.requires_grad and "ignores it: the bias is frozen" in caplog.text
    use_logit_bias(model, Namespace(siglip=True, model=student_name), pytest.fail)  # accepted: no error
    plain = open_clip.create_model("tiny-clip-rope-248")
    with pytest.raises(ValueError, match="has no logit bias"):
        use_logit_bias(plain, Namespace(siglip=True, model="tiny-clip-rope-248"), _raise)


def _raise(message):
    raise ValueError(message)


@pytest.mark.parametrize("flags, message", [
    (("--siglip",), "tiny-clip-rope-248 has no logit bias"),
    (("--siglip", "--local-loss"), "--local-loss with --siglip"),
    (("--siglip", "--gather-with-grad", "--label-smoothing", "0.1"), "--gather-with-grad, --label-smoothing with"),
    (("--siglip", "--loss-dist-impl", "ring"), "SigLIP's loss knows bidir"),
    (("--loss-dist-impl", "shift"), "without --siglip stage 2 runs the softmax CLIP loss"),
])
def test_stage2_refuses_siglip_flags_that_cannot_apply(tmp_path, capsys, flags, message):
    argv = ["--model", "tiny-clip-rope-248"] + base_args(str(tmp_path / "logs"), "refused") + list(flags)
    with pytest.raises(SystemExit):
        main_context_finetune_rope.parse_args(argv)
    assert message in capsys.readouterr().err


def test_stage1_refuses_siglip(tmp_path, capsys):
    argv = ["--model", "tiny-clip-rope-248", "--teacher-model", "tiny-clip", "--siglip"] + \
        base_args(str(tmp_path / "logs"), "refused")
    with pytest.raises(SystemExit):
        main_distill_rope.parse_args(argv)
    assert "--siglip is refused" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ README's worked example

# README, "Which configs are supported": the same commands (the test puts siglip2_demo/ in a temporary folder)
README_COMMANDS = """
python -m training_ext.synthetic --out siglip2_demo/data --n-train 32 --n-val 8 --n-test 8
python tests/fixtures/siglip2_tiny/run.py training_ext.main_distill_rope \
  --model siglip2-tiny-rope-248 --teacher-model siglip2-tiny \
  --train-data siglip2_demo/data/train.csv --logs siglip2_demo/logs --name stage1 \
  --batch-size 8 --epochs 1 --lr 1e-3 --warmup 1 --device cpu --workers 0
python tests/fixtures/siglip2_tiny/run.py training_ext.main_context_finetune_rope \
  --model siglip2-tiny-rope-248 --siglip \
  --pretrained siglip2_demo/logs/stage1/checkpoints/epoch_1.pt \
  --student-checkpoint siglip2_demo/logs/stage1/checkpoints/epoch_1.pt \
  --train-data siglip2_demo/data/train.csv --csv-short-caption-key short_title \
  --logs siglip2_demo/logs --name stage2 --batch-size 8 --epochs 1 --lr 1e-3 --warmup 1 --device cpu --workers 0
python tests/fixtures/siglip2_tiny/run.py training_ext.eval \
  --model siglip2-tiny-rope-248:siglip2_demo/logs/stage2/checkpoints/epoch_1.pt \
  --csv ordinary=siglip2_demo/data/test_ordinary.csv --csv detail=siglip2_demo/data/test_detail.csv \
  --device cpu --workers 0 --output-dir siglip2_demo/eval
"""


def _fixture_launcher():
    spec = importlib.util.spec_from_file_location("siglip2_tiny_run", os.path.join(FIXTURE, "run.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands(root):
    """Each README command as (module, argv), siglip2_demo/ moved under ``root``."""
    for line in README_COMMANDS.replace("\\\n", " ").strip().splitlines():
        words = [word.replace("siglip2_demo", str(root)) for word in shlex.split(line)]
        assert words[1] in ("-m", "tests/fixtures/siglip2_tiny/run.py"), line
        yield words[2], words[3:]


@pytest.mark.slow
def test_readme_siglip2_example_runs_stage1_stage2_with_siglip_and_eval(tmp_path):
    """The README's commands in-process (the launcher's ``register`` then each module's entry function): stage 2
    trains the logit bias with the sigmoid loss, and eval scores the stage-2 checkpoint on both splits."""
    from training_ext.demo.colour_grids import main as synthetic
    from training_ext.eval.runner import main as evaluate

    launcher = _fixture_launcher()
    name = launcher.register()
    try:
        entries = {"training_ext.synthetic": synthetic,
                   "training_ext.main_distill_rope": lambda argv: main_distill_rope.run(
                       main_distill_rope.parse_args(argv)),
                   "training_ext.main_context_finetune_rope": lambda argv: main_context_finetune_rope.run(
                       main_context_finetune_rope.parse_args(argv)),
                   "training_ext.eval": evaluate}
        for module, argv in _commands(tmp_path / "demo"):
            entries[module](argv)
        stage1, stage2 = (torch.load(tmp_path / f"demo/logs/{run}/checkpoints/epoch_1.pt", weights_only=True)
                          ["state_dict"] for run in ("stage1", "stage2"))
        assert stage1["logit_bias"].item() == -10.0  # the config's init_logit_bias; stage 1 trains text only
        assert abs(stage2["logit_bias"].item() + 10.0) > 1e-4
        with open(tmp_path / "demo/eval/results.json") as handle:
            results = json.dumps(json.load(handle))
        assert "ordinary" in results and "detail" in results and "siglip2-tiny-rope-248" in results
    finally:
        unregister(name, f"{name}-rope-248")
