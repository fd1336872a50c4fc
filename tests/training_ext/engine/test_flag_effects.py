"""Every open_clip_train flag a stage honours, shown by its effect: one table row per flag (``CASES``) runs the
stage's set-up with and without the flag and compares what it built (model, optimizer, schedule, data, loss,
run folder, process group). The set-up is the engine's own ``run_stage`` with the epoch loop replaced by a recorder,
so every object comes from the code a training run executes; nothing trains. Flags whose effect lives in the epoch
loop or the process set-up are checked on the loop's own functions with the parsed flags.

Adding a flag to ``FLAG_POLICY`` as honoured needs one ``Case`` line here (``test_every_honoured_flag_has_a_case``).
"""
import argparse
import csv
import math
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Tuple

import open_clip
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from support.shard_fixtures import jpeg_bytes, write_shard
from support.training_helpers import STUDENT, TEACHER, long_caption, save_stock_teacher, write_csv
from training_ext import main_context_finetune_rope, main_distill_rope
from training_ext.engine import loop, session, trainer
from training_ext.engine.builders import create_clip
from training_ext.engine.checkpoint import checkpoint_dict, save_training_state
from training_ext.engine.distributed import wrap_for_processes
from training_ext.engine.optim import create_optimizer, create_scaler
from training_ext.engine.params import stage_policy
from training_ext.stages.finetune import clip_loss_for
from open_clip.loss import SigLipLoss
from open_clip_ext.configs import register_model_config
from training_ext.stages.finetune_stage import lock_towers
from open_clip_ext.convert import uses_quick_gelu

ENTRY = {"distill": main_distill_rope.ENTRY, "finetune": main_context_finetune_rope.ENTRY}
SIGMOID = "flag-effects-tiny-rope-sigmoid"  # the student with a logit bias, as SigLIP-family configs have
register_model_config(SIGMOID, {**open_clip.get_model_config(STUDENT), "init_logit_bias": -10})
ROWS = 16  # 4 steps of 4 per epoch
FILES = {}


# --------------------------------------------------------------------------------------------- the runs

@dataclass
class Built:
    """What one stage set up for its flags: ``args`` as parsed, ``state`` (model, optimizer, scaler, scheduler,
    epoch, step, trained module), the training and validation DataInfo and the StageModels."""
    args: argparse.Namespace
    state: Any
    data: Any
    val: Any
    models: Any


class Runs:
    def __init__(self, folder):
        self.folder, self.count, self.built = folder, 0, {}

    def argv(self, stage: str, flags) -> list:
        self.count += 1
        head = ["--model", STUDENT] + (["--teacher-model", TEACHER] if stage == "distill" else [])
        return head + ["--train-data", FILES["train"], "--logs", str(self.folder), "--name", f"run{self.count}",
                       "--batch-size", "4", "--epochs", "2", "--lr", "1e-3", "--warmup", "2", "--wd", "0.1",
                       "--device", "cpu", "--precision", "fp32", "--workers", "0", "--seed", "0", *flags]

    def parse(self, stage: str, flags=()) -> argparse.Namespace:
        return ENTRY[stage].parse_args(self.argv(stage, flags))

    def build(self, stage: str, flags=()) -> Built:
        key = (stage, tuple(flags))
        if key not in self.built:
            self.built[key] = self._build(stage, flags)
        return self.built[key]

    def _build(self, stage: str, flags) -> Built:
        args = self.parse(stage, flags)
        seen = {}
        runner = ENTRY[stage].stage()
        build_models, validation = runner.build_models, trainer.make_retrieval_validation

        def recorded_models(*a):
            seen["models"] = build_models(*a)
            return seen["models"]

        def recorded_validation(args, image_model, text_model, val_data, *rest):
            seen["val"] = val_data
            return validation(args, image_model, text_model, val_data, *rest)

        def no_epochs(state, args, data, *rest, **options):
            seen["state"], seen["data"] = state, data

        runner.build_models = recorded_models
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(trainer, "train", no_epochs)
            patch.setattr(trainer, "make_retrieval_validation", recorded_validation)
            trainer.run_stage(args, runner)
        return Built(args, seen["state"], seen["data"], seen["val"], seen["models"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flag_effects")
    FILES["train"] = write_csv(str(folder / "train"), rows=ROWS)
    FILES["small"] = write_csv(str(folder / "small"), rows=8)
    FILES["val"] = write_csv(str(folder / "val"), rows=6)
    FILES["teacher"] = save_stock_teacher(str(folder / "teacher.pt"))
    FILES["comma"], FILES["keys"] = _comma_csv(folder), _keyed_csv(folder)
    FILES["shards"] = [write_shard(str(folder / f"part{n}.tar"),
                                   [(f"{n}{i:03d}", {"jpg": jpeg_bytes(i), "txt": long_caption(i).encode()})
                                    for i in range(8)]) for n in range(2)]
    torch.manual_seed(5)
    FILES["student"] = str(folder / "student.pt")
    torch.save({"state_dict": open_clip.create_model(STUDENT).state_dict()}, FILES["student"])
    FILES["resume"] = _resumable(folder)
    return Runs(folder / "logs")


def _comma_csv(folder) -> str:
    path = folder / "comma.csv"
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["filepath", "title"])
        for i in range(ROWS):
            writer.writerow([str(folder / "train" / "images" / f"{i}.png"), f"comma caption {i}. A second sentence."])
    return str(path)


def _keyed_csv(folder) -> str:
    """Columns filepath/title (the defaults) and img/cap holding other images and captions."""
    os.makedirs(folder / "other", exist_ok=True)
    path = folder / "keys.csv"
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream, delimiter="\t")
        writer.writerow(["filepath", "title", "img", "cap"])
        for i in range(ROWS):
            other = folder / "other" / f"{i}.png"
            Image.new("RGB", (40, 40), (200, i, 0)).save(other)
            writer.writerow([str(folder / "train" / "images" / f"{i}.png"), f"title {i}. More.", str(other),
                             f"cap {i}. More."])
    return str(path)


def _resumable(folder) -> str:
    """A checkpoint after epoch 1 (4 steps) of a model other than the one the runs build."""
    torch.manual_seed(11)
    model = open_clip.create_model(STUDENT)
    flags = SimpleNamespace(opt="adamw", lr=1e-3, wd=0.1, beta1=0.9, beta2=0.98, eps=1e-6, momentum=None,
                            precision="fp32")
    optimizer = create_optimizer(model, flags)
    path = str(folder / "resume.pt")
    torch.save(checkpoint_dict(model, optimizer, create_scaler(flags, torch.device("cpu")), 1, 4, "r", None), path)
    return path


# ------------------------------------------------------------------------------------- reference values

def cosine_lr(base, warmup, total, step):
    """open_clip_train's cosine schedule in closed form: linear warmup to ``base``, then half a cosine to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) * base


def lr_at(built: Built, step: int) -> float:
    built.state.scheduler(step)
    return built.state.optimizer.param_groups[0]["lr"]


def group_of(built_or_optimizer, model, name: str) -> dict:
    optimizer = getattr(getattr(built_or_optimizer, "state", None), "optimizer", built_or_optimizer)
    param = dict(model.named_parameters())[name]
    return next(group for group in optimizer.param_groups if any(p is param for p in group["params"]))


def text_of(built: Built):
    return built.state.model.text


def dataset_of(built: Built):
    return built.data.dataloader.dataset


def trainable(model, prefix: str):
    return {name: p.requires_grad for name, p in model.named_parameters() if name.startswith(prefix)}


def transforms_of(preprocess, kind):
    return [t for t in preprocess.transforms if isinstance(t, kind)]


# --------------------------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Case:
    """``flag`` given as ``argv`` on top of ``base`` changes what ``check(on, off)`` compares. ``kind`` "built":
    on/off are Built runs of each stage in ``stages``; "parsed": the parsed flags only (the check calls the
    engine function that reads them). ``engine``: the effect is in code both stages run (optimizer, schedule,
    validation data, process and run set-up), so one stage's check stands for both."""
    flag: str
    argv: Tuple[str, ...]
    check: Callable
    stages: Tuple[str, ...] = ("finetune",)
    engine: bool = False
    base: Tuple[str, ...] = ()
    kind: str = "built"


BOTH = ("distill", "finetune")


def _data_type(on, off):
    from training_ext.data.loaders import SyntheticTextDataset
    assert isinstance(dataset_of(on), SyntheticTextDataset) and len(dataset_of(on)) == 64
    assert not isinstance(dataset_of(off), SyntheticTextDataset)


def _data_type_images(on, off):
    from training_ext.data.loaders import SyntheticImageTextDataset
    assert isinstance(dataset_of(on), SyntheticImageTextDataset) and len(dataset_of(on)) == 64
    assert not isinstance(dataset_of(off), SyntheticImageTextDataset)


def _train_data(on, off):
    assert (on.data.epoch_size, off.data.epoch_size) == (8, ROWS)
    assert (on.data.dataloader.num_batches, off.data.dataloader.num_batches) == (2, 4)


def _train_num_samples(on, off):
    assert (on.data.dataloader.num_batches, off.data.dataloader.num_batches) == (2, 4)  # steps per epoch
    assert list(on.data.sampler) == list(off.data.sampler)[:8]  # the first 8 of the epoch's order
    assert on.data.epoch_size == off.data.epoch_size == ROWS  # the order a resume checks is the data's


def _val_data(on, off):
    assert off.val is None and len(on.val.dataloader.dataset) == 6


def _val_num_samples(on, off):
    assert len(on.val.dataloader.dataset) == 3 and len(off.val.dataloader.dataset) == 6
    assert [on.val.dataloader.dataset[i][1].tolist() for i in range(3)] == \
        [off.val.dataloader.dataset[i][1].tolist() for i in range(3)]  # the first rows, the same every time


def _shard_source(built):
    """The first stage of the webdataset pipeline: the WebLoader's DataLoader reads the pipeline."""
    return built.data.dataloader.pipeline[0].dataset.pipeline[0]


def _resampled(on, off):
    from open_clip_train.data import ResampledShards2
    assert isinstance(_shard_source(on), ResampledShards2) and not isinstance(_shard_source(off), ResampledShards2)


def _upsampling(on, off):
    assert _shard_source(on).weights == [1.0, 3.0] and _shard_source(off).weights is None
    assert _shard_source(on).urls == FILES["shards"]


def _read_column(path, column, delimiter):
    with open(path, newline="") as stream:
        return [row[column] for row in csv.DictReader(stream, delimiter=delimiter)]


def _separator(on, off):
    assert list(dataset_of(on).captions) == _read_column(FILES["comma"], "title", ",")


def _caption_key(on, off):
    assert list(dataset_of(on).captions) == _read_column(FILES["keys"], "cap", "\t")
    assert list(dataset_of(off).captions) == _read_column(FILES["keys"], "title", "\t")


def _img_key(on, off):
    assert list(dataset_of(on).image_paths) == _read_column(FILES["keys"], "img", "\t")
    assert list(dataset_of(off).image_paths) == _read_column(FILES["keys"], "filepath", "\t")


def _seed(on, off):
    def order(seed):
        return torch.randperm(ROWS, generator=torch.Generator().manual_seed(seed)).tolist()
    assert list(on.data.sampler) == order(7) and list(off.data.sampler) == order(0)


def _workers(on, off):
    assert (on.data.dataloader.num_workers, off.data.dataloader.num_workers) == (2, 0)


def _batch_size(on, off):
    assert (on.data.dataloader.batch_size, on.data.dataloader.num_batches) == (2, 8)
    assert (off.data.dataloader.batch_size, off.data.dataloader.num_batches) == (4, 4)


def _epochs(on, off):  # 4 steps per epoch: 12 in all instead of 8
    for step in (1, 5, 7):
        assert lr_at(on, step) == pytest.approx(cosine_lr(1e-3, 2, 12, step))
        assert lr_at(off, step) == pytest.approx(cosine_lr(1e-3, 2, 8, step))


def _accum_freq(on, off):  # 2 micro-batches a step: 2 steps per epoch, 4 in all
    for step in (1, 2, 3):
        assert lr_at(on, step) == pytest.approx(cosine_lr(1e-3, 2, 4, step))
        assert lr_at(off, step) == pytest.approx(cosine_lr(1e-3, 2, 8, step))


def _lr(on, off):
    assert lr_at(on, 1) == pytest.approx(5e-3) and lr_at(off, 1) == pytest.approx(1e-3)


def _warmup(on, off):
    assert lr_at(on, 0) == pytest.approx(1e-3 / 4) and lr_at(off, 0) == pytest.approx(1e-3 / 2)
    assert lr_at(on, 5) == pytest.approx(cosine_lr(1e-3, 4, 8, 5))


def _const(on, off):
    assert [lr_at(on, s) for s in (0, 2, 7)] == pytest.approx([5e-4, 1e-3, 1e-3])
    assert lr_at(off, 7) == pytest.approx(cosine_lr(1e-3, 2, 8, 7))


def cooldown_lr(base, warmup, total, cooldown, power, end, step):
    """open_clip_train's const-cooldown schedule in closed form."""
    start = total - cooldown
    if step < warmup:
        return base * (step + 1) / warmup
    if step < start:
        return base
    return (1 - (step - start) / (total - start)) ** power * (base - end) + end


COOLDOWN = ("--lr-scheduler", "const-cooldown", "--epochs-cooldown", "1")


def _cooldown(steps, power=(1.0, 1.0), end=(0.0, 0.0), cooldown=(4, 4)):
    def check(on, off):
        for step in steps:
            assert lr_at(on, step) == pytest.approx(cooldown_lr(1e-3, 2, 8, cooldown[0], power[0], end[0], step))
            assert lr_at(off, step) == pytest.approx(cooldown_lr(1e-3, 2, 8, cooldown[1], power[1], end[1], step))
    return check


def _optimizer_value(key, on_value, off_value, name="text.transformer.resblocks.0.mlp.c_fc.weight"):
    def check(on, off):
        assert group_of(on, on.state.model, name)[key] == on_value
        assert group_of(off, off.state.model, name)[key] == off_value
    return check


def _wd(on, off):
    model = on.state.model
    assert group_of(on, model, "text.transformer.resblocks.0.mlp.c_fc.weight")["weight_decay"] == 0.3
    for name in ("text.transformer.resblocks.0.mlp.c_fc.bias", "text.ln_final.weight", "logit_scale"):
        assert group_of(on, model, name)["weight_decay"] == 0.0
    assert group_of(off, off.state.model, "text.token_embedding.weight")["weight_decay"] == 0.1


def _opt(on, off):
    assert type(on.state.optimizer) is torch.optim.SGD and type(off.state.optimizer) is torch.optim.AdamW
    model = on.state.model  # open_clip_train's grouping: biases and norms without weight decay
    assert group_of(on, model, "text.ln_final.weight")["weight_decay"] == 0.0
    assert group_of(on, model, "text.token_embedding.weight")["weight_decay"] == 0.1


def _momentum(on, off):
    name = "text.token_embedding.weight"
    assert group_of(on, on.state.model, name)["momentum"] == 0.5
    assert group_of(off, off.state.model, name)["momentum"] == 0.9  # timm's SGD default


def _model(on, off):
    assert text_of(on).position == "cope" and text_of(off).position == "rope"


def _pretrained(on, off):
    saved = torch.load(FILES["student"], weights_only=True)["state_dict"]["text.token_embedding.weight"]
    assert torch.equal(text_of(on).token_embedding.weight, saved)
    assert not torch.equal(text_of(off).token_embedding.weight, saved)


def _context_length(on, off):
    assert (text_of(on).context_length, text_of(off).context_length) == (100, 248)
    long_ids = 0 if on.args.stage == "distill" else 1  # (long_ids,) or (image, long_ids, short_ids)
    assert dataset_of(on)[0][long_ids].shape == (100,) and dataset_of(off)[0][long_ids].shape == (248,)


def _quick_gelu(on, off):
    assert uses_quick_gelu(text_of(on)) and not uses_quick_gelu(text_of(off))


def _image_size(on, off):
    assert on.state.model.visual.grid_size == (6, 6) and off.state.model.visual.grid_size == (4, 4)
    assert on.models.preprocess_val.transforms[0].size == 48
    base = open_clip.create_model(TEACHER, pretrained=FILES["teacher"], force_image_size=48)  # stock open_clip
    assert torch.equal(on.state.model.visual.positional_embedding, base.visual.positional_embedding)


def _patch_dropout(on, off):
    assert on.state.model.visual.patch_dropout.prob == 0.5
    assert not isinstance(off.state.model.visual.patch_dropout, type(on.state.model.visual.patch_dropout))


def _custom_text(on, off):
    assert isinstance(on.state.model, open_clip.CustomTextCLIP) and type(off.state.model) is open_clip.CLIP


def _grad_checkpointing(on, off):
    assert text_of(on).transformer.grad_checkpointing and not text_of(off).transformer.grad_checkpointing


def _precision(dtype, scaler):
    def check(on, off):
        assert on.state.model.visual.conv1.weight.dtype == dtype
        assert text_of(on).transformer.resblocks[0].mlp.c_fc.weight.dtype == dtype
        assert on.state.scaler.is_enabled() == scaler and not off.state.scaler.is_enabled()
        assert off.state.model.visual.conv1.weight.dtype == torch.float32
    return check


def _torchcompile(on, off):
    """The module the step runs, as the engine prepares it (torch.compile recorded: compiling takes seconds)."""
    module = torch.nn.Linear(2, 2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", lambda given: ("compiled", given))
        for args in (on, off):
            args.distributed = False
        assert trainer.compile_if_asked(module, on) == ("compiled", module)
        assert trainer.compile_if_asked(module, off) is module


def _resume(on, off):
    saved = torch.load(FILES["resume"], weights_only=True)
    assert (on.state.epoch, on.state.step, off.state.epoch, off.state.step) == (1, 4, 0, 0)
    for name, tensor in on.state.model.state_dict().items():
        assert torch.equal(tensor, saved["state_dict"][name]), name


def _optimized_count(built):
    return sum(p.numel() for group in built.state.optimizer.param_groups for p in group["params"])


def _lock_image(on, off):
    assert not any(trainable(on.state.model, "visual.").values())
    assert all(trainable(off.state.model, "visual.").values())
    assert _optimized_count(on) == _optimized_count(off) - sum(
        p.numel() for n, p in off.state.model.named_parameters() if n.startswith("visual."))


def _unlocked_groups(on, off):
    unlocked = {n for n, grad in trainable(on.state.model, "visual.").items() if grad}
    assert unlocked == {"visual.proj"}  # the last of open_clip's groups
    assert not any(trainable(off.state.model, "visual.").values())


def _freeze_bn_stats(on, off):
    """A ResNet image tower (the tiny configs have none): its BatchNorms frozen, statistics included."""
    def locked(args):
        torch.manual_seed(0)
        model = open_clip.CLIP(embed_dim=32, vision_cfg=dict(layers=[1, 1, 1, 1], width=8, image_size=64),
                               text_cfg=dict(context_length=8, vocab_size=100, width=16, heads=2, layers=1))
        lock_towers(model, args)
        return sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert locked(on) == 0 and locked(off) > 0


def _lock_text(on, off):
    assert not any(trainable(on.state.model, "text.").values())
    assert all(trainable(off.state.model, "text.").values())


def _unlocked_layers(on, off):
    unlocked = {n for n, grad in trainable(on.state.model, "text.").items() if grad}
    assert unlocked and all(n.startswith(("text.transformer.resblocks.1.", "text.ln_final", "text.text_projection"))
                            for n in unlocked)
    assert not any(trainable(off.state.model, "text.").values())


def _freeze_layer_norm(on, off):  # always on: open_clip 3.3 locks LayerNorms with the text weights
    for built in (on, off):
        assert not text_of(built).ln_final.weight.requires_grad and built.args.lock_text


def _normalize(attribute, value):
    def check(on, off):
        for built, expected in ((on, value), (off, open_clip.OPENAI_DATASET_MEAN if attribute == "mean"
                                              else open_clip.OPENAI_DATASET_STD)):
            for preprocess in (built.models.preprocess_train, built.models.preprocess_val):
                normalize, = transforms_of(preprocess, T.Normalize)
                assert tuple(getattr(normalize, attribute)) == pytest.approx(expected)
    return check


def _interpolation(on, off):  # open_clip's training crop is always bicubic; the flag sets the resize
    resize, = transforms_of(on.models.preprocess_val, T.Resize)
    assert resize.interpolation == T.InterpolationMode.BILINEAR
    resize, = transforms_of(off.models.preprocess_val, T.Resize)
    assert resize.interpolation == T.InterpolationMode.BICUBIC


def _resize_mode(on, off):
    assert on.models.preprocess_val.transforms[0].size == (32, 32)  # squash: both sides, no crop
    assert not transforms_of(on.models.preprocess_val, T.CenterCrop)
    assert off.models.preprocess_val.transforms[0].size == 32 and transforms_of(off.models.preprocess_val,
                                                                                 T.CenterCrop)


def _aug_cfg(on, off):
    crop, = transforms_of(on.models.preprocess_train, T.RandomResizedCrop)
    assert tuple(crop.scale) == (0.5, 1.0)
    crop, = transforms_of(off.models.preprocess_train, T.RandomResizedCrop)
    assert tuple(crop.scale) == (0.9, 1.0)  # open_clip's default


# ---- parsed: the engine function that reads the flag, called with the parsed flags

def _loss_field(field):
    def check(on, off):
        for args in (on, off):
            args.rank, args.world_size = 0, 1  # set by the process set-up
        assert getattr(clip_loss_for(on), field) and not getattr(clip_loss_for(off), field)
    return check


def _siglip(on, off):
    """Sigmoid loss over features and the model's logit bias, which trains; without it the softmax loss, which has
    no use for the bias: frozen, out of the optimizer, not returned by the trained module."""
    assert isinstance(clip_loss_for(on.args), SigLipLoss) and not isinstance(clip_loss_for(off.args), SigLipLoss)
    assert on.state.model.logit_bias.requires_grad and not off.state.model.logit_bias.requires_grad
    assert _optimized_count(on) == _optimized_count(off) + 1
    inputs = torch.randn(2, 3, 32, 32), torch.zeros(2, 248, dtype=torch.long)
    assert on.state.trained(*inputs)[4] is on.state.model.logit_bias and off.state.trained(*inputs)[4] is None


def _loss_dist_impl(on, off):
    for args in (on, off):
        args.rank, args.world_size = 0, 1  # set by the process set-up
    assert clip_loss_for(on).dist_impl == "shift" and clip_loss_for(off).dist_impl == "bidir"


def _grad_clip(on, off):
    def update_norm(args):
        weight = torch.nn.Parameter(torch.zeros(4, 4))
        weight.grad = torch.full((4, 4), 10.0)
        state = SimpleNamespace(model=torch.nn.ParameterList([weight]), optimizer=torch.optim.SGD([weight], lr=1.0),
                                scaler=torch.amp.GradScaler("cpu", enabled=False))
        loop.apply_update(state, args.grad_clip_norm)
        return weight.detach().norm().item()
    assert update_norm(on) == pytest.approx(1.0) and update_norm(off) == pytest.approx(40.0)


def _saved(args, folder, epochs=4):
    os.makedirs(folder)
    for epoch in range(1, epochs + 1):
        save_training_state({"epoch": epoch}, str(folder), True, epochs, args.save_frequency,
                            args.delete_previous_checkpoint)
    return sorted(os.listdir(folder))


def _save_frequency(on, off):
    assert _saved(on, FILES["tmp"] / "save_on") == ["epoch_2.pt", "epoch_4.pt", "epoch_latest.pt"]
    assert _saved(off, FILES["tmp"] / "save_off") == [f"epoch_{n}.pt" for n in (1, 2, 3, 4)] + ["epoch_latest.pt"]


def _delete_previous(on, off):
    assert _saved(on, FILES["tmp"] / "delete_on") == ["epoch_4.pt", "epoch_latest.pt"]
    assert len(_saved(off, FILES["tmp"] / "delete_off")) == 5


def _save_most_recent(on, off):  # always on: epoch_latest.pt is rewritten at every save
    for args, where in ((on, "recent_on"), (off, "recent_off")):
        folder = FILES["tmp"] / where
        os.makedirs(folder)
        save_training_state({"epoch": 0, "step": 3}, str(folder), False, 2, args.save_frequency, False)
        assert torch.load(folder / "epoch_latest.pt", weights_only=True)["step"] == 3


def _val_frequency(on, off):
    assert [loop.val_due(on, e) for e in (1, 2, 3, 4, 5)] == [False, False, True, False, True]  # and the last
    assert [loop.val_due(off, e) for e in (1, 2)] == [True, True]  # --epochs 2 (the last epoch always)


def _log_every(on, off):
    def logged(args):
        writes = []
        writer = SimpleNamespace(add_scalar=lambda name, value, step: writes.append(step))
        logger = loop.StepLogger(args, SimpleNamespace(dataloader=SimpleNamespace(num_samples=16)), writer, 0, 4,
                                 dict)
        args.rank, args.world_size, args.wandb = 0, 1, False
        state = SimpleNamespace(optimizer=SimpleNamespace(param_groups=[{"lr": 1e-3}]), skipped_steps=0)
        for step in range(1, 5):
            state.step, state.epoch_samples = step, 4 * step
            logger.log(state, {"loss": 1.0}, step)
        return sorted(set(writes))
    assert logged(on) == [1, 4] and logged(off) == [1, 2, 3, 4]  # every 3rd step from the first, and the last


def _wrapped(args):
    """What engine.distributed hands to DDP in a distributed run (DDP itself recorded, not run: torch's
    SyncBatchNorm needs GPU modules)."""
    import training_ext.engine.distributed as distributed
    args.distributed = True
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(distributed, "DistributedDataParallel", lambda module, **options: (module, options))
        return wrap_for_processes(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)), args,
                                  torch.device("cpu"))


def _static_graph(on, off):
    assert _wrapped(on)[1]["static_graph"] and not _wrapped(off)[1].get("static_graph")


def _bn_sync(on, off):
    assert isinstance(_wrapped(on)[0][1], torch.nn.SyncBatchNorm)
    assert type(_wrapped(off)[0][1]) is torch.nn.BatchNorm1d


def _device_set_up(args):
    """open_clip_train's process set-up as engine.session calls it, as rank 1 of 2 on a machine with CUDA
    (stand-ins for the process group and the device)."""
    import open_clip_train.distributed as distributed
    calls = {}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
            patch.setenv(name, value)
        patch.setattr(distributed, "is_device_available", lambda device: (True, True))
        patch.setattr(distributed, "set_device", lambda device: calls.setdefault("set_device", device))
        patch.setattr(torch.distributed, "init_process_group", lambda **options: calls.update(options))
        patch.setattr(torch.distributed, "get_world_size", lambda: 2)
        patch.setattr(torch.distributed, "get_rank", lambda: 1)
        device = session.init_distributed_device(args)
    return str(device), calls


def _set_device_rank(on, off):
    on.device = off.device = "cuda"
    assert _device_set_up(on)[0] == "cuda" and "set_device" not in _device_set_up(on)[1]
    assert _device_set_up(off) == ("cuda:1", {"backend": "nccl", "init_method": "env://", "set_device": "cuda:1"})


def _dist_url(on, off):
    assert _device_set_up(on)[1]["init_method"] == "tcp://10.0.0.1:2345"
    assert _device_set_up(off)[1]["init_method"] == "env://"


def _dist_backend(on, off):
    assert _device_set_up(on)[1]["backend"] == "mpi" and _device_set_up(off)[1]["backend"] == "gloo"  # cpu


def _device(on, off):  # as rank 1 of 2: the local rank's CUDA device
    assert _device_set_up(on)[0] == "cuda:1" and _device_set_up(off)[0] == "cpu"


def _started(args):
    """engine.session's run set-up with these flags; closed again before returning (args keep what it set)."""
    args.resume = None
    session.start_run(args)
    session.finish_run(args, None, True)
    return args


def _run_folder(on, off):
    on, off = _started(on), _started(off)
    assert on.log_path == os.path.join(on.logs, on.name, "out.log") and os.path.isfile(on.log_path)
    assert os.path.dirname(on.log_path) != os.path.dirname(off.log_path)


def _log_local(on, off):
    assert _started(on).log_path.endswith("out-0") and _started(off).log_path.endswith("out.log")


def _debug(on, off):
    import logging
    levels = []
    for args in (on, off):
        args.resume = None
        session.start_run(args)
        levels.append(logging.getLogger().level)
        session.finish_run(args, None, True)
    assert levels == [logging.DEBUG, logging.INFO]


def _wandb_init(args):
    calls = {}
    fake = SimpleNamespace(init=lambda **options: calls.update(options), save=lambda *a, **k: None, run=None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(session, "wandb", fake)
        _started(args)
        session.open_wandb(args, 16)
    return calls


def _report_to(on, off):
    writer = session.open_tensorboard(_started(on))
    try:
        assert writer is not None and os.path.isdir(on.tensorboard_path)
    finally:
        writer.close()
    assert session.open_tensorboard(_started(off)) is None


def _wandb_field(field, value):
    def check(on, off):
        assert _wandb_init(on)[field] == value and _wandb_init(off)[field] != value
    return check


class Recorded(Exception):
    pass


def _cache_dir(on, off):
    seen = []

    def recorded(*args, **options):
        seen.append(options["cache_dir"])
        raise Recorded  # nothing needs building

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(open_clip, "create_model_and_transforms", recorded)
        for args in (on, off):
            with pytest.raises(Recorded):
                create_clip(args, args.model, args.pretrained, torch.device("cpu"))
    assert seen == [str(FILES["tmp"] / "hub"), None]


def _skip_scheduler(on, off):
    """The epoch loop with a step that trains nothing: the lr of each step as the loop left it."""
    def lrs(built):
        seen = []
        step = lambda batches: seen.append(built.state.optimizer.param_groups[0]["lr"]) or {"loss": 0.0}
        loop.run_epoch(built.state, built.args, built.data, step, lambda: None, None, dict, 4)
        return seen
    assert lrs(on) == pytest.approx([5e-3] * 4)  # --lr as given, never scheduled
    assert lrs(off) == pytest.approx([cosine_lr(5e-3, 2, 8, s) for s in range(4)])


PLAIN = ("--model", TEACHER, "--allow-plain-clip")
WDS = ("--train-num-samples", "8", "--dataset-type", "webdataset")
CASES = [
    # data
    Case("--train-data", ("--train-data", "{small}"), _train_data, BOTH),
    Case("--train-num-samples", ("--train-num-samples", "8"), _train_num_samples, engine=True),  # every map-style set
    Case("--dataset-type", ("--dataset-type", "synthetic"), _data_type, ("distill",)),
    Case("--dataset-type", ("--dataset-type", "synthetic"), _data_type_images, ("finetune",)),
    Case("--val-data", ("--val-data", "{val}"), _val_data, engine=True),
    Case("--val-num-samples", ("--val-num-samples", "3"), _val_num_samples, engine=True, base=("--val-data", "{val}")),
    Case("--dataset-resampled", ("--dataset-resampled",), _resampled, engine=True,
         base=("--train-data", "{shard0}", *WDS)),
    Case("--train-data-upsampling-factors", ("--train-data-upsampling-factors", "1::3"), _upsampling, engine=True,
         base=("--train-data", "{shard0}::{shard1}", "--dataset-resampled", *WDS)),
    Case("--csv-separator", ("--train-data", "{comma}", "--csv-separator", ","), _separator, BOTH),
    Case("--csv-caption-key", ("--csv-caption-key", "cap"), _caption_key, BOTH, base=("--train-data", "{keys}")),
    Case("--csv-img-key", ("--csv-img-key", "img"), _img_key, engine=True, base=("--train-data", "{keys}")),
    Case("--seed", ("--seed", "7"), _seed, engine=True),
    Case("--workers", ("--workers", "2"), _workers, engine=True),
    Case("--batch-size", ("--batch-size", "2"), _batch_size, engine=True),
    # optimizer and schedule
    Case("--lr", ("--lr", "5e-3"), _lr, engine=True, base=("--lr-scheduler", "const")),
    Case("--wd", ("--wd", "0.3"), _wd, engine=True),
    # the defaults are open_clip_train's for a model name without "ViT": betas (0.9, 0.999), eps 1e-8
    Case("--beta1", ("--beta1", "0.8"), _optimizer_value("betas", (0.8, 0.999), (0.9, 0.999)), engine=True),
    Case("--beta2", ("--beta2", "0.95"), _optimizer_value("betas", (0.9, 0.95), (0.9, 0.999)), engine=True),
    Case("--eps", ("--eps", "1e-5"), _optimizer_value("eps", 1e-5, 1e-8), engine=True),
    Case("--opt", ("--opt", "timm/sgd"), _opt, engine=True),
    Case("--momentum", ("--momentum", "0.5"), _momentum, engine=True, base=("--opt", "timm/sgd")),
    Case("--epochs", ("--epochs", "3"), _epochs, engine=True),
    Case("--accum-freq", ("--accum-freq", "2"), _accum_freq, engine=True),
    Case("--warmup", ("--warmup", "4"), _warmup, engine=True),
    Case("--lr-scheduler", ("--lr-scheduler", "const"), _const, engine=True),
    Case("--epochs-cooldown", ("--epochs-cooldown", "2"), _cooldown((2, 3, 5), cooldown=(8, 4)), engine=True,
         base=COOLDOWN),
    Case("--lr-cooldown-end", ("--lr-cooldown-end", "1e-4"), _cooldown((5, 6, 7), end=(1e-4, 0.0)), engine=True,
         base=COOLDOWN),
    Case("--lr-cooldown-power", ("--lr-cooldown-power", "2"), _cooldown((5, 6, 7), power=(2.0, 1.0)), engine=True,
         base=COOLDOWN),
    Case("--skip-scheduler", ("--skip-scheduler",), _skip_scheduler, engine=True, base=("--lr", "5e-3", "--seed", "3")),
    # models
    Case("--model", ("--model", "tiny-clip-cope-248"), _model, BOTH),
    Case("--pretrained", ("--pretrained", "{student}"), _pretrained, BOTH),
    Case("--force-context-length", ("--force-context-length", "100"), _context_length, BOTH),
    Case("--force-quick-gelu", ("--force-quick-gelu",), _quick_gelu, BOTH),
    Case("--force-image-size", ("--force-image-size", "48"), _image_size, base=("--pretrained", "{teacher}")),
    Case("--force-patch-dropout", ("--force-patch-dropout", "0.5"), _patch_dropout),
    Case("--force-custom-text", ("--force-custom-text",), _custom_text, base=PLAIN),
    Case("--grad-checkpointing", ("--grad-checkpointing",), _grad_checkpointing, engine=True),
    Case("--precision", ("--precision", "bf16"), _precision(torch.bfloat16, False), engine=True),
    Case("--precision", ("--precision", "amp"), _precision(torch.float32, True), engine=True),
    Case("--torchcompile", ("--torchcompile",), _torchcompile, engine=True, kind="parsed"),
    Case("--resume", ("--resume", "{resume}"), _resume, engine=True),
    Case("--lock-image", ("--lock-image",), _lock_image),
    Case("--lock-image-unlocked-groups", ("--lock-image-unlocked-groups", "1"), _unlocked_groups,
         base=("--lock-image",)),
    Case("--lock-image-freeze-bn-stats", ("--lock-image-freeze-bn-stats",), _freeze_bn_stats, base=("--lock-image",),
         kind="parsed"),
    Case("--lock-text", ("--lock-text",), _lock_text),
    Case("--lock-text-unlocked-layers", ("--lock-text-unlocked-layers", "1"), _unlocked_layers,
         base=("--lock-text",)),
    Case("--lock-text-freeze-layer-norm", ("--lock-text-freeze-layer-norm",), _freeze_layer_norm,
         base=("--lock-text",)),
    Case("--image-mean", ("--image-mean", "0.5", "0.4", "0.3"), _normalize("mean", (0.5, 0.4, 0.3))),
    Case("--image-std", ("--image-std", "0.2", "0.3", "0.4"), _normalize("std", (0.2, 0.3, 0.4))),
    Case("--image-interpolation", ("--image-interpolation", "bilinear"), _interpolation),
    Case("--image-resize-mode", ("--image-resize-mode", "squash"), _resize_mode),
    Case("--aug-cfg", ("--aug-cfg", "scale=(0.5,1.0)"), _aug_cfg),
    # the loss, the epoch loop, checkpoints
    Case("--local-loss", ("--local-loss",), _loss_field("local_loss"), kind="parsed"),
    Case("--gather-with-grad", ("--gather-with-grad",), _loss_field("gather_with_grad"), kind="parsed"),
    Case("--siglip", ("--siglip",), _siglip, base=("--model", SIGMOID)),
    Case("--loss-dist-impl", ("--loss-dist-impl", "shift"), _loss_dist_impl, kind="parsed",
         base=("--model", SIGMOID, "--siglip")),
    Case("--grad-clip-norm", ("--grad-clip-norm", "1.0"), _grad_clip, engine=True, kind="parsed"),
    Case("--save-frequency", ("--save-frequency", "2"), _save_frequency, engine=True, kind="parsed",
         base=("--epochs", "4")),
    Case("--delete-previous-checkpoint", ("--delete-previous-checkpoint",), _delete_previous, engine=True,
         kind="parsed", base=("--epochs", "4")),
    Case("--save-most-recent", ("--save-most-recent",), _save_most_recent, engine=True, kind="parsed"),
    Case("--val-frequency", ("--val-frequency", "3"), _val_frequency, engine=True, kind="parsed",
         base=("--epochs", "5")),
    Case("--log-every-n-steps", ("--log-every-n-steps", "3"), _log_every, engine=True, kind="parsed",
         base=("--log-every-n-steps", "1")),
    # processes and the run folder
    Case("--ddp-static-graph", ("--ddp-static-graph",), _static_graph, engine=True, kind="parsed"),
    Case("--use-bn-sync", ("--use-bn-sync",), _bn_sync, engine=True, kind="parsed"),
    Case("--no-set-device-rank", ("--no-set-device-rank",), _set_device_rank, engine=True, kind="parsed"),
    Case("--dist-url", ("--dist-url", "tcp://10.0.0.1:2345"), _dist_url, engine=True, kind="parsed"),
    Case("--dist-backend", ("--dist-backend", "mpi"), _dist_backend, engine=True, kind="parsed"),
    Case("--device", ("--device", "cuda"), _device, engine=True, kind="parsed"),
    Case("--logs", ("--logs", "{tmp}/other_logs"), _run_folder, engine=True, kind="parsed"),
    Case("--name", ("--name", "named"), _run_folder, engine=True, kind="parsed"),
    Case("--log-local", ("--log-local",), _log_local, engine=True, kind="parsed"),
    Case("--debug", ("--debug",), _debug, engine=True, kind="parsed"),
    Case("--report-to", ("--report-to", "tensorboard"), _report_to, engine=True, kind="parsed"),
    Case("--wandb-notes", ("--wandb-notes", "a note"), _wandb_field("notes", "a note"), engine=True, kind="parsed",
         base=("--report-to", "wandb")),
    Case("--wandb-project-name", ("--wandb-project-name", "proj"), _wandb_field("project", "proj"), engine=True,
         kind="parsed", base=("--report-to", "wandb")),
    Case("--cache-dir", ("--cache-dir", "{tmp}/hub"), _cache_dir, engine=True, kind="parsed"),
]


def _params():
    for case in CASES:
        for stage in case.stages:
            yield pytest.param(case, stage, id=f"{stage}:{' '.join(case.argv)}")


def _filled(argv):
    names = {"shard0": FILES["shards"][0], "shard1": FILES["shards"][1], "tmp": str(FILES["tmp"]),
             **{k: v for k, v in FILES.items() if isinstance(v, str)}}
    return tuple(item.format(**names) for item in argv)


@pytest.mark.parametrize("case, stage", list(_params()))
def test_flag_has_its_effect(runs, tmp_path, case, stage):
    FILES["tmp"] = tmp_path
    base, argv = _filled(case.base), _filled(case.argv)
    if case.kind == "parsed":
        case.check(runs.parse(stage, base + argv), runs.parse(stage, base))
    else:
        case.check(runs.build(stage, base + argv), runs.build(stage, base))


def test_every_honoured_flag_has_a_case():
    """A flag honoured by a stage has a case run in that stage, or in either when its effect is engine code."""
    for stage in ENTRY:
        honoured, _ = stage_policy(stage)
        covered = {case.flag for case in CASES if stage in case.stages or case.engine}
        assert set(honoured) - covered == set(), f"{stage}: honoured flags without an effect case"
        assert covered - set(honoured) == set(), f"{stage}: cases of flags the stage refuses"
        for case in CASES:
            assert case.flag in case.argv, case


def test_train_num_samples_is_the_epoch_length_of_map_style_data_and_keeps_its_order():
    """Fewer samples than the data: a prefix of the epoch's permutation; more: whole permutations, then a part. The
    order does not depend on the length, so a resume under another --train-num-samples continues it."""
    from training_ext.data.loaders import ResumableDistributedSampler
    dataset = list(range(5))

    def order(samples, start=0, world=1, rank=0):
        sampler = ResumableDistributedSampler(dataset, world, rank, seed=1, epoch_samples=samples)
        sampler.start_at(start)
        return list(sampler), len(sampler)

    longer, count = order(12)
    assert count == 12 and sorted(longer[:5]) == sorted(longer[5:10]) == dataset and len(set(longer[10:])) == 2
    assert longer[:5] == order(None)[0] == order(3)[0] + longer[3:5]  # the plain epoch's order, cut or continued
    assert order(15)[0][:12] == longer and order(12, start=7) == (longer[7:], 5)
    shares = [order(12, start=2, world=2, rank=rank)[0] for rank in (0, 1)]
    assert [i for pair in zip(*shares) for i in pair] == longer[2:12]
