"""Stage 1 (relative position distillation) end to end on the tiny configs, and its pieces."""
import glob
import json
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F

import open_clip_ext
from open_clip.transformer import VisionTransformer
from training_ext import main_distill_rope
from training_ext.stages.distill import distillation_losses
from training_ext.stages.text_inputs import TeacherInputs
from support.training_helpers import STUDENT, TEACHER, distill_args, long_caption, save_stock_teacher, write_csv


def _naive_recall(image_features, text_features, k):
    """Fraction of queries whose own pair scores strictly above all but fewer than k others (loop version)."""
    sims = F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()
    hits_i2t = sum(int((sims[i] > sims[i, i]).sum()) < k for i in range(len(sims)))
    hits_t2i = sum(int((sims[:, j] > sims[j, j]).sum()) < k for j in range(len(sims)))
    return hits_i2t / len(sims), hits_t2i / len(sims)


def test_distillation_losses_match_their_definitions():
    torch.manual_seed(1)
    s, t = torch.randn(5, 8), torch.randn(5, 8)
    got = distillation_losses(s, t, {"cosine": 1.0, "mse": 0.5, "l2": 2.0})
    cosine = 1 - sum((s[i] @ t[i]) / (s[i].norm() * t[i].norm()) for i in range(5)) / 5
    mse = ((s - t) ** 2).sum() / s.numel()
    l2 = sum(((s[i] - t[i]) ** 2).sum().sqrt() for i in range(5)) / 5
    torch.testing.assert_close(got["cosine_loss"], cosine)
    torch.testing.assert_close(got["mse_loss"], mse)
    torch.testing.assert_close(got["l2_loss"], l2)
    torch.testing.assert_close(got["loss"], cosine + 0.5 * mse + 2.0 * l2)
    assert distillation_losses(t, t, {"cosine": 1.0})["loss"].abs() < 1e-6


def test_teacher_ids_equal_tokenizing_at_77():
    captions = [long_caption(3, sentences=12), "a short one", long_caption(5, sentences=2)]
    student_tokenizer, teacher_tokenizer = open_clip.get_tokenizer(STUDENT), open_clip.get_tokenizer(TEACHER)
    inputs = TeacherInputs(student_tokenizer, teacher_tokenizer)
    assert inputs.derived and inputs.data_tokenizer is student_tokenizer  # one tokenizer: cut, not re-tokenized
    ids248 = student_tokenizer(captions)
    assert ids248.shape[1] == 248
    student_ids, teacher_ids = inputs.split(ids248)
    assert student_ids is ids248
    torch.testing.assert_close(teacher_ids, teacher_tokenizer(captions), rtol=0, atol=0)


def test_trimmed_batch_gives_the_padded_features():
    model = open_clip.create_model("tiny-clip-cope-248").eval()
    tokenizer = open_clip.get_tokenizer(STUDENT)
    ids = tokenizer(["two words", long_caption(2)])
    trimmed = open_clip_ext.trim_padding(ids, model)
    assert trimmed.shape[1] < 248 and trimmed.shape[1] == int((ids == tokenizer.eot_token_id).int().argmax(1).max()) + 1
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(trimmed), model.encode_text(ids), rtol=0, atol=1e-6)


def test_loss_spec_and_help(capsys):
    args = main_distill_rope.parse_args(["--model", STUDENT, "--teacher-model", TEACHER, "--distill-loss", "cosine=1,mse=0.5",
                       "--lr", "5e-4", "--accum-freq", "2"])
    assert args.distill_loss == {"cosine": 1.0, "mse": 0.5} and args.lr == 5e-4 and args.accum_freq == 2
    # torchrun hands the script a leading '--'
    torchrun_argv = ["--", "--model", STUDENT, "--teacher-model", TEACHER, "--logs", "x"]
    assert main_distill_rope.parse_args(torchrun_argv).logs == "x"
    with pytest.raises(SystemExit):
        main_distill_rope.parse_args(["--teacher-model", TEACHER, "--distill-loss", "kl"])
    with pytest.raises(SystemExit) as stop:
        main_distill_rope.parse_args(["--help"])
    assert stop.value.code == 0
    shown = capsys.readouterr().out
    for flag in ("--teacher-model", "--distill-loss", "--save-every-n-steps", "--train-data", "--accum-freq"):
        assert flag in shown


@pytest.mark.slow
def test_stage1_end_to_end(tmp_path, monkeypatch):
    teacher_ckpt = save_stock_teacher(str(tmp_path / "teacher.pt"))
    # training rows point at image files that do not exist: stage 1 must never open them
    train = write_csv(str(tmp_path / "train"), rows=16, images=False)
    val = write_csv(str(tmp_path / "val"), rows=8, images=True)
    vision_calls = []
    original_forward = VisionTransformer.forward
    monkeypatch.setattr(VisionTransformer, "forward",
                        lambda self, x: vision_calls.append(len(x)) or original_forward(self, x))

    argv = distill_args(str(tmp_path / "logs"), "s1", train, epochs=2, extra=[
        "--pretrained", teacher_ckpt, "--teacher-pretrained", teacher_ckpt, "--val-data", val,
        "--report-to", "tensorboard,wandb", "--distill-loss", "cosine=1,l2=0.1"])
    state = main_distill_rope.run(main_distill_rope.parse_args(argv))

    assert (state.epoch, state.step) == (2, 8)
    # the only image-tower calls are validation's: 2 batches of 4 after each of the 2 epochs
    assert vision_calls == [4, 4, 4, 4]
    teacher = open_clip.create_model(TEACHER, pretrained=teacher_ckpt)
    student_sd, teacher_sd = state.model.state_dict(), teacher.state_dict()
    for key in [k for k in student_sd if k.startswith("visual.")] + ["logit_scale"]:
        assert torch.equal(student_sd[key], teacher_sd[key]), key  # teacher's vision, frozen
    assert not torch.equal(student_sd["text.text_projection"], teacher_sd["text_projection"])  # text trained

    run_dir = tmp_path / "logs" / "s1"
    final = str(run_dir / "checkpoints" / "epoch_2.pt")
    loaded = open_clip.create_model(STUDENT, pretrained=final).eval()
    state.model.eval()
    ids = open_clip.get_tokenizer(STUDENT)([long_caption(i, sentences=9) for i in range(5)])
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(ids), state.model.encode_text(ids))

    # validation: teacher image tower vs student text, R@k both ways, as in open_clip_train's results.jsonl
    results = [json.loads(line) for line in open(run_dir / "checkpoints" / "results.jsonl")]
    assert [r["epoch"] for r in results] == [1, 2]
    _, _, preprocess = open_clip.create_model_and_transforms(TEACHER)
    rows = [line.rstrip("\n").split("\t") for line in open(val)][1:]
    images = torch.stack([preprocess(open_clip_ext_image(path)) for path, _ in rows])
    tokens = open_clip.get_tokenizer(STUDENT)([caption for _, caption in rows])
    with torch.no_grad():
        image_features, text_features = teacher.encode_image(images), loaded.encode_text(tokens)
    for k in (1, 5, 10):
        i2t, t2i = _naive_recall(image_features, text_features, k)
        assert results[-1][f"image_to_text_R@{k}"] == pytest.approx(100 * i2t)
        assert results[-1][f"text_to_image_R@{k}"] == pytest.approx(100 * t2i)

    # logging: open_clip_train's log file, tensorboard scalars, an offline wandb run
    log = open(run_dir / "out.log").read()
    assert "Train Epoch: 1" in log and "/s/gpu" in log and "Cosine_loss" in log and "L2_loss" in log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    for tag in ("train/samples_per_second", "train/cosine_loss", "train/l2_loss", "train/loss",
                "val/image_to_text_R@1", "val/text_to_image_R@10"):
        assert tag in events.Tags()["scalars"], tag
    assert glob.glob(str(run_dir / "wandb" / "offline-run-*"))


def open_clip_ext_image(path):
    from PIL import Image
    with Image.open(path) as image:
        return image.convert("RGB")
