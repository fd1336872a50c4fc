"""Training-step throughput (samples/s) of both stages against a naive baseline, measured in the same run.

Baselines do what TULIP's reference code does:
- stage 1: a CSV loader that decodes and preprocesses every image, the student and the teacher run as full CLIP
  models (both image towers run), the student reads all 248 token positions;
- stage 2: each image is encoded twice (once with the long, once with the short captions), short captions are
  padded to 248 tokens.
Ours: training_ext's data (stage 1 reads captions only), step functions and optimizer (fused AdamW; the baselines
use torch's default AdamW, as the reference does). Both sides read the
same CSV of JPEG files with workers=0 (data time counts), and run interleaved round by round so machine noise
hits them alike.

    python scripts/bench_train_step.py                                   # ViT-B-16 sizes, CPU
    python scripts/bench_train_step.py --student ViT-B-16-cope-248 --batch-size 8 --rounds 3
Targets: stage 1 >= 3x, stage 2 >= 1.4x.

Stage "1c" compares stage-1 epochs with a teacher cache (--teacher-cache; the cache is precomputed first,
untimed) against the same stage 1 running the teacher, both ours:
    python scripts/bench_train_step.py --stages 1c --student ViT-L-14-rope-248 --teacher ViT-L-14
Target: >= 1.3x at ViT-L-14 text size. Measured on CPU (1 thread, batch 4, 4 interleaved rounds): 1.55x with
~63-token captions (--caption-words 55), 1.23x with ~134-token captions (the default 120 words). The cache
removes one no-grad teacher forward over 77 tokens per step; the student's forward and backward over the whole
caption remain, so the gain shrinks as captions grow.
"""
import argparse
import json
import os
import random
import statistics
import tempfile
import time
from contextlib import suppress

import open_clip
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from open_clip_train.data import CsvDataset
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

import open_clip_ext  # noqa: F401
from training_ext.data import get_image_text_data, get_text_data
from training_ext.distill import (
    StudentTextFeatures, TeacherTextFeatures, distillation_losses, freeze_all_but_text, make_distill_step,
)
from training_ext.finetune import ClipFeatures, clip_loss_for, finetune_losses, make_finetune_step
from training_ext.optim import create_optimizer
from training_ext.params import parse_args
from training_ext.text_inputs import teacher_ids

_WORDS = ("a red wooden table stands next to the window while a small grey cat sleeps on a soft blue blanket "
          "and sunlight falls across the old tiled floor near two green plants in clay pots").split()


def write_fixture(folder: str, count: int, caption_words: int, image_size) -> str:
    """`count` noisy JPEGs (decode cost like real photos) and long captions; returns the CSV path."""
    rng = random.Random(0)
    rows = ["filepath\ttitle"]
    for index in range(count):
        path = os.path.join(folder, f"{index}.jpg")
        noise = torch.randint(0, 256, (image_size[1], image_size[0], 3), dtype=torch.uint8).numpy()
        Image.fromarray(noise).save(path, quality=90)
        words = [rng.choice(_WORDS) for _ in range(caption_words)]
        sentences = [" ".join(words[i:i + 15]).capitalize() + "." for i in range(0, len(words), 15)]
        rows.append(f"{path}\t{' '.join(sentences)}")
    csv = os.path.join(folder, "bench.csv")
    with open(csv, "w") as stream:
        stream.write("\n".join(rows) + "\n")
    return csv


def training_args(stage: str, csv: str, opts) -> argparse.Namespace:
    flags = ["--model", opts.student, "--train-data", csv, "--dataset-type", "csv", "--batch-size",
             str(opts.batch_size), "--workers", "0", "--precision", "fp32", "--device", opts.device]
    if stage == "distill":
        flags += ["--teacher-model", opts.teacher]
    args = parse_args(flags, stage=stage)
    args.world_size, args.rank, args.distributed = 1, 0, False
    return args


def adamw(model):
    """The reference's optimizer: torch's AdamW with default settings."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)


class Runner:
    """Runs `steps` optimizer steps from an endless batch iterator and reports samples/s."""

    def __init__(self, name, batches, step, batch_size):
        self.name, self.batches, self.step, self.batch_size = name, batches, step, batch_size

    def run(self, steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            self.step(next(self.batches))
        return steps * self.batch_size / (time.perf_counter() - start)


def forever(loader):
    while True:
        yield from loader


def stage1_runners(csv, opts, device):
    args = training_args("distill", csv, opts)
    tokenizer = open_clip.get_tokenizer(opts.student)
    teacher, preprocess_train, _ = open_clip.create_model_and_transforms(opts.teacher, device=device,
                                                                         output_dict=True)
    teacher.eval().requires_grad_(False)

    student = open_clip.create_model(opts.student, device=device)
    freeze_all_but_text(student)
    optimizer = create_optimizer(student, args)
    step_fn = make_distill_step(StudentTextFeatures(student), TeacherTextFeatures(teacher), {"cosine": 1.0},
                                device, suppress, None, distributed=False)

    def ours(batch):
        optimizer.zero_grad(set_to_none=True)
        step_fn([batch], where="bench")
        optimizer.step()

    naive_student = open_clip.create_model(opts.student, device=device, output_dict=True)
    freeze_all_but_text(naive_student)
    naive_optimizer = adamw(naive_student)
    context = teacher.context_length
    naive_loader = DataLoader(CsvDataset(csv, preprocess_train, "filepath", "title", tokenizer=tokenizer),
                              batch_size=opts.batch_size, shuffle=True, drop_last=True)

    def naive(batch):
        images, ids = (t.to(device) for t in batch)
        naive_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            target = teacher(images, teacher_ids(ids, context))["text_features"]
        features = naive_student(images, ids)["text_features"]
        distillation_losses(features, target, {"cosine": 1.0})["loss"].backward()
        naive_optimizer.step()

    return [Runner("ours", forever(get_text_data(args, tokenizer).dataloader), ours, opts.batch_size),
            Runner("naive", forever(naive_loader), naive, opts.batch_size)]


def stage2_runners(csv, opts, device):
    args = training_args("finetune", csv, opts)
    tokenizer = open_clip.get_tokenizer(opts.student)
    model, preprocess_train, _ = open_clip.create_model_and_transforms(opts.student, device=device)
    optimizer = create_optimizer(model, args)
    clip_loss = clip_loss_for(args)
    features = ClipFeatures(model)
    step_fn = make_finetune_step(features, features, clip_loss, 0.2, device, None, suppress, None, False)

    def ours(batch):
        optimizer.zero_grad(set_to_none=True)
        step_fn([batch], where="bench")
        optimizer.step()

    naive_model = open_clip.create_model(opts.student, device=device, output_dict=True)
    naive_optimizer = adamw(naive_model)

    def naive(batch):
        images, long_ids, short_ids = (t.to(device) for t in batch)
        naive_optimizer.zero_grad(set_to_none=True)
        long_out = naive_model(images, long_ids)   # the image tower runs here ...
        short_out = naive_model(images, short_ids)  # ... and again here
        loss = (clip_loss(long_out["image_features"], long_out["text_features"], long_out["logit_scale"])
                + 0.2 * clip_loss(short_out["image_features"], short_out["text_features"], short_out["logit_scale"]))
        loss.backward()
        naive_optimizer.step()

    loader = get_image_text_data(args, tokenizer, preprocess_train, is_train=True).dataloader
    return [Runner("ours", forever(loader), ours, opts.batch_size),
            Runner("naive", forever(loader), naive, opts.batch_size)]


def stage1_cache_runners(csv, opts, device):
    """Stage 1 with the live teacher against stage 1 reading the teacher's embeddings from a cache."""
    import precompute_teacher_embeddings  # scripts/ is on sys.path when this script runs
    from training_ext.teacher_cache import TeacherCache

    folder = os.path.dirname(csv)
    teacher_path = os.path.join(folder, "teacher.pt")
    torch.save(open_clip.create_model(opts.teacher).state_dict(), teacher_path)
    cache_dir = os.path.join(folder, "teacher_cache")
    precompute_teacher_embeddings.main(["--teacher-model", opts.teacher, "--teacher-pretrained", teacher_path,
                                        "--data", csv, "--output", cache_dir, "--device", opts.device,
                                        "--precision", "fp32", "--no-progress"])
    teacher = open_clip.create_model(opts.teacher, pretrained=teacher_path, device=device).eval()
    tokenizer = open_clip.get_tokenizer(opts.student)
    runners = []
    args = training_args("distill", csv, opts)
    for name, cache in (("teacher", None), ("cached", TeacherCache(cache_dir))):
        student = open_clip.create_model(opts.student, device=device)
        freeze_all_but_text(student)
        optimizer = create_optimizer(student, args)  # both sides ours: only the teacher's work differs
        step_fn = make_distill_step(StudentTextFeatures(student), None if cache else TeacherTextFeatures(teacher),
                                    {"cosine": 1.0}, device, suppress, None, distributed=False)

        def step(batch, step_fn=step_fn, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            step_fn([batch], where="bench")
            optimizer.step()

        loader = get_text_data(args, tokenizer, teacher_cache=cache).dataloader
        runners.append(Runner(name, forever(loader), step, opts.batch_size))
    return runners


STAGES = {"1": (stage1_runners, "ours", "naive"), "2": (stage2_runners, "ours", "naive"),
          "1c": (stage1_cache_runners, "cached", "teacher")}


def measure(runners, rounds: int, steps: int, desc: str):
    for runner in runners:  # warm-up: allocator, first-call overheads
        runner.run(1)
    rates = {runner.name: [] for runner in runners}
    for _ in tqdm(range(rounds), desc=desc):
        for runner in runners:
            rates[runner.name].append(runner.run(steps))
    return {name: statistics.median(values) for name, values in rates.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="ViT-B-16-rope-248", help="student / fine-tuned model config")
    parser.add_argument("--teacher", default="ViT-B-16", help="stage-1 teacher config (77 tokens)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (median reported)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per round")
    parser.add_argument("--caption-words", type=int, default=120,
                        help="words per long caption (120 words ~ 150 tokens; 200+ fills the 248 context)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(640, 480), help="JPEG width height")
    parser.add_argument("--stages", default="1,2", help="which stages to measure: 1, 2, and 1c (stage 1 with a "
                                                        "teacher cache against running the teacher)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    device = torch.device(opts.device)
    results = {"student": opts.student, "teacher": opts.teacher, "batch_size": opts.batch_size,
               "caption_words": opts.caption_words, "device": str(device), "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as folder:
        csv = write_fixture(folder, opts.batch_size * 8, opts.caption_words, opts.image_size)
        ids = open_clip.get_tokenizer(opts.student)([line.split("\t")[1] for line in open(csv)][1:])
        results["mean_caption_tokens"] = float((ids != 0).sum(1).float().mean())
        for stage in opts.stages.split(","):
            build, fast, slow = STAGES[stage]
            rates = measure(build(csv, opts, device), opts.rounds, opts.steps, f"stage {stage}")
            results[f"stage{stage}"] = {**rates, "speedup": rates[fast] / rates[slow],
                                        # one epoch of the fixture (its size times the batches of one rate)
                                        "epoch_seconds": {k: opts.batch_size * 8 / v for k, v in rates.items()}}
    print(json.dumps(results, indent=1))
    for stage in opts.stages.split(","):
        _, fast, slow = STAGES[stage]
        r = results[f"stage{stage}"]
        print(f"stage {stage}: {fast} {r[fast]:.2f} samples/s, {slow} {r[slow]:.2f} samples/s, "
              f"speedup {r['speedup']:.2f}x")
    if opts.json:
        with open(opts.json, "w") as stream:
            json.dump(results, stream, indent=1)


if __name__ == "__main__":
    main()
