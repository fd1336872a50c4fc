"""Stage 2 (context fine-tuning) end to end on the tiny configs, and its pieces."""
import math

import open_clip
import pytest
import torch
from open_clip.transformer import VisionTransformer

from support.training_helpers import STUDENT, TEACHER, base_args, long_caption, save_stock_teacher, write_csv
from training_ext import main_context_finetune_rope
from training_ext.stages.finetune import finetune_losses
from training_ext.stages.student_checkpoint import load_student_text_tower


def _naive_clip_loss(image, text, scale):
    """Mean of image->text and text->image cross-entropy, written out row by row."""
    logits = scale * image @ text.t()
    n = len(image)
    i2t = -sum(logits[i, i] - torch.logsumexp(logits[i], 0) for i in range(n)) / n
    t2i = -sum(logits[i, i] - torch.logsumexp(logits[:, i], 0) for i in range(n)) / n
    return (i2t + t2i) / 2


def test_finetune_loss_is_long_plus_weighted_short():
    torch.manual_seed(2)
    image, long, short = (torch.nn.functional.normalize(torch.randn(6, 8), dim=-1) for _ in range(3))
    scale = torch.tensor(14.0)
    from open_clip.loss import ClipLoss
    got = finetune_losses(image, long, short, scale, ClipLoss(), short_weight=0.2)
    torch.testing.assert_close(got["long_loss"], _naive_clip_loss(image, long, scale))
    torch.testing.assert_close(got["short_loss"], _naive_clip_loss(image, short, scale))
    torch.testing.assert_close(got["loss"], got["long_loss"] + 0.2 * got["short_loss"])
    assert "short_loss" not in finetune_losses(image, long, None, scale, ClipLoss(), 0.0)


def _save_student(path, name=STUDENT, seed=7):
    torch.manual_seed(seed)
    student = open_clip.create_model(name)
    torch.save({"epoch": 1, "step": 3, "name": "s1", "state_dict": student.state_dict(),
                "model_cfg": open_clip.get_model_config(name)}, path)
    return student.state_dict()


def test_student_text_tower_replaces_text_only(tmp_path):
    teacher_ckpt = save_stock_teacher(str(tmp_path / "teacher.pt"))
    student_sd = _save_student(str(tmp_path / "student.pt"))
    model = open_clip.create_model(STUDENT, pretrained=teacher_ckpt)
    vision_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("text.")}
    load_student_text_tower(model, str(tmp_path / "student.pt"))
    after = model.state_dict()
    for key, value in after.items():
        want = student_sd[key] if key.startswith("text.") else vision_before[key]
        assert torch.equal(value, want), key
    assert torch.equal(after["text.text_projection"], student_sd["text.text_projection"])  # distilled projection kept
    _save_student(str(tmp_path / "cope.pt"), name="tiny-clip-cope-248")
    with pytest.raises(Exception, match="cope"):
        load_student_text_tower(model, str(tmp_path / "cope.pt"))


@pytest.mark.slow
def test_stage2_end_to_end(tmp_path, monkeypatch):
    teacher_ckpt = save_stock_teacher(str(tmp_path / "teacher.pt"))
    student_sd = _save_student(str(tmp_path / "student.pt"))
    train = write_csv(str(tmp_path / "train"), rows=16, short_column=True)
    val = write_csv(str(tmp_path / "val"), rows=8)
    image_batches = []
    original_forward = VisionTransformer.forward
    monkeypatch.setattr(VisionTransformer, "forward",
                        lambda self, x: image_batches.append(len(x)) or original_forward(self, x))
    argv = ["--model", STUDENT, "--pretrained", teacher_ckpt, "--student-checkpoint", str(tmp_path / "student.pt"),
            "--csv-short-caption-key", "short", "--short-caption-weight", "0.5", "--val-data", val,
            "--lock-image"] + base_args(str(tmp_path / "logs"), "s2", train)
    state = main_context_finetune_rope.run(main_context_finetune_rope.parse_args(argv))

    assert (state.epoch, state.step) == (1, 4)
    assert image_batches == [4, 4, 4, 4] + [4, 4]  # each image encoded once per step, then validation
    teacher_sd = open_clip.create_model(TEACHER, pretrained=teacher_ckpt).state_dict()
    final_sd = state.model.state_dict()
    for key in (k for k in final_sd if k.startswith("visual.")):
        assert torch.equal(final_sd[key], teacher_sd[key]), key  # --lock-image: vision from --pretrained, frozen
    assert not torch.equal(final_sd["text.text_projection"], student_sd["text.text_projection"])
    assert 0 <= final_sd["logit_scale"].item() <= math.log(100)

    final = str(tmp_path / "logs" / "s2" / "checkpoints" / "epoch_1.pt")
    loaded = open_clip.create_model(STUDENT, pretrained=final).eval()
    state.model.eval()
    ids = open_clip.get_tokenizer(STUDENT)([long_caption(i, sentences=10) for i in range(4)])
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(ids), state.model.encode_text(ids))
        assert torch.equal(loaded.encode_image(images), state.model.encode_image(images))
    log = open(tmp_path / "logs" / "s2" / "out.log").read()
    assert "Long_loss" in log and "Short_loss" in log and "Eval Epoch: 1" in log


def test_stage2_lock_text_trains_vision_only(tmp_path):
    student_sd = _save_student(str(tmp_path / "student.pt"))
    train = write_csv(str(tmp_path / "train"), rows=8)
    argv = ["--model", STUDENT, "--student-checkpoint", str(tmp_path / "student.pt"), "--lock-text",
            "--dataset-type", "csv"] + base_args(str(tmp_path / "logs"), "lt", train)
    torch.manual_seed(0)  # the run seeds with --seed 0 before building the model
    initial_vision = open_clip.create_model(STUDENT).visual.state_dict()
    state = main_context_finetune_rope.run(main_context_finetune_rope.parse_args(argv))
    final_sd = state.model.state_dict()
    for key in (k for k in final_sd if k.startswith("text.")):
        assert torch.equal(final_sd[key], student_sd[key]), key
    changed = [k for k, v in state.model.visual.state_dict().items() if not torch.equal(v, initial_vision[k])]
    assert len(changed) == len(initial_vision)  # every vision tensor trained
