"""--accum-freq k gives the update of a k-times larger batch, in both stages.

The runs use SGD with momentum: its update is linear in the gradient, so equal weights mean equal gradients
(Adam would hide a gradient scaled by k, and would turn rounding noise in gradients that are zero in exact
arithmetic, e.g. CoPE's k_ln bias, into updates of size lr).
"""
from support.training_helpers import (
    STUDENT, TEACHER, assert_state_dicts_close, base_args, save_stock_teacher, write_csv,
)
from training_ext import main_context_finetune_rope, main_distill_rope

SGD = ["--opt", "timm/sgd", "--momentum", "0.9", "--lr", "0.05"]


def _distill(tmp_path, name, batch, accum, train, teacher):
    argv = ["--model", "tiny-clip-cope-248", "--teacher-model", TEACHER, "--pretrained", teacher,
            "--teacher-pretrained", teacher, "--distill-loss", "cosine=1,mse=1", "--accum-freq", str(accum)]
    argv += base_args(str(tmp_path / "logs"), name, train, batch_size=batch, extra=SGD)
    return main_distill_rope.run(main_distill_rope.parse_args(argv))


def _finetune(tmp_path, name, batch, accum, train, pretrained):
    argv = ["--model", STUDENT, "--pretrained", pretrained, "--accum-freq", str(accum)]
    argv += base_args(str(tmp_path / "logs"), name, train, batch_size=batch, extra=SGD)
    return main_context_finetune_rope.run(main_context_finetune_rope.parse_args(argv))


def test_stage1_accumulation_equals_larger_batch(tmp_path):
    teacher = save_stock_teacher(str(tmp_path / "teacher.pt"))
    train = write_csv(str(tmp_path / "train"), rows=16, images=False)
    large = _distill(tmp_path, "large", batch=8, accum=1, train=train, teacher=teacher)
    accumulated = _distill(tmp_path, "accum", batch=2, accum=4, train=train, teacher=teacher)
    assert large.step == accumulated.step == 2
    assert_state_dicts_close(accumulated.model.state_dict(), large.model.state_dict())


def test_stage2_accumulation_equals_larger_batch(tmp_path):
    pretrained = save_stock_teacher(str(tmp_path / "teacher.pt"))
    train = write_csv(str(tmp_path / "train"), rows=12)
    large = _finetune(tmp_path, "large", batch=6, accum=1, train=train, pretrained=pretrained)
    accumulated = _finetune(tmp_path, "accum", batch=2, accum=3, train=train, pretrained=pretrained)
    assert large.step == accumulated.step == 2
    assert_state_dicts_close(accumulated.model.state_dict(), large.model.state_dict())


def test_grad_checkpointing_gives_the_same_update(tmp_path):
    """--grad-checkpointing (TULIP's reference raised TypeError) recomputes activations, changing nothing else."""
    pretrained = save_stock_teacher(str(tmp_path / "teacher.pt"))
    train = write_csv(str(tmp_path / "train"), rows=8)
    plain = _finetune(tmp_path, "plain", batch=4, accum=1, train=train, pretrained=pretrained)
    argv = ["--model", STUDENT, "--pretrained", pretrained, "--grad-checkpointing"]
    argv += base_args(str(tmp_path / "logs"), "ckpt", train, batch_size=4, extra=SGD)
    checkpointed = main_context_finetune_rope.run(main_context_finetune_rope.parse_args(argv))
    assert_state_dicts_close(checkpointed.model.state_dict(), plain.model.state_dict())
    assert checkpointed.model.text.transformer.grad_checkpointing
