"""Training-step throughput (samples/s) of both stages against a naive baseline, measured in the same run.

Baselines do what TULIP's reference code does:
- stage 1: a CSV loader that decodes and preprocesses every image, the student and the teacher run as full CLIP
  models (both image towers run), the student reads all 248 token positions;
- stage 2: each image is encoded twice (once with the long, once with the short captions), short captions are
  padded to 248 tokens.
Ours: training_ext's data (stage 1 reads captions only), step functions and optimizer (fused AdamW; the baselines
use torch's default AdamW, as the reference does). Both sides read the same CSV of JPEG files (--workers, default
0: data time counts in the step) and run interleaved round by round so machine noise hits them alike.

    python scripts/bench_train_step.py                                   # ViT-B-16 sizes, CPU
    python scripts/bench_train_step.py --student ViT-B-16-cope-248 --batch-size 8 --rounds 3
Targets: stage 1 >= 3x, stage 2 >= 1.4x (on CPU). Measured on a 2-core CPU: stage 1 3.53x, stage 2 2.33x.
On a GPU (--device cuda --precision amp_bf16 --workers N) both stage-2 sides wait on JPEG decoding (1.01x on an
H100 with 8 workers, batch 32), so there the ratio measures the loader, not the step; stage 1 was 1.46x.

Stage "1c" compares stage-1 epochs with a teacher cache (--teacher-cache; the cache is precomputed first,
untimed) against the same stage 1 running the teacher, both ours:
    python scripts/bench_train_step.py --stages 1c --student ViT-L-14-rope-248 --teacher ViT-L-14
Target: >= 1.3x at ViT-L-14 text size. The cache removes one no-grad teacher forward over 77 tokens per step
(its time inside the step is reported); the student's forward and backward over the whole caption remain, so
the gain shrinks as captions grow. Measured with ~134-token captions: 1.27x on a 2-core CPU (fp32, batch 4);
1.32x to 1.42x on an H100 (amp_bf16, batch 20, with or without loader workers), 1.53x at batch 64.

Which side goes first alternates from round to round: the side that runs right after the other pays for cold
caches, which measured up to 20% here and must favour neither.
"""
import argparse
import json
import os
import random
import statistics
import tempfile
import time

import open_clip
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from open_clip_train.data import CsvDataset
from open_clip_train.precision import get_autocast
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

import open_clip_ext  # noqa: F401
from open_clip_ext.tokens import caption_ids
from training_ext.common.csv_table import read_csv_table
from training_ext.data.loaders import get_image_text_data, get_text_data
from training_ext.stages.distill import (
    StudentTextFeatures, TeacherTextFeatures, distillation_losses, freeze_all_but_text, make_distill_step,
)
from training_ext.stages.finetune import ClipFeatures, clip_loss_for, finetune_losses, make_finetune_step
from training_ext.engine.optim import create_optimizer
from training_ext.engine.params import parse_args
from training_ext.stages.flags import DistillFlags, FinetuneFlags
from training_ext.stages.text_inputs import TeacherInputs

_WORDS = ("a red wooden table stands next to the window while a small grey cat sleeps on a soft blue blanket "
          "and sunlight falls across the old tiled floor near two green plants in clay pots").split()

# Benchmarks run fp32 or bf16 autocast: no loss scaling, as the trainer's disabled GradScaler.
NO_SCALER = torch.amp.GradScaler(enabled=False)


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
             str(opts.batch_size), "--workers", str(opts.workers), "--precision", opts.precision,
             "--device", opts.device]
    if stage == "distill":
        flags += ["--teacher-model", opts.teacher]
    # the entry point of the student's position type, as `python -m training_ext.main_<stage>_<position>` parses
    position = "cope" if open_clip.get_model_config(opts.student)["text_cfg"].get("pos_embed_type") == "cope" \
        else "rope"
    args = parse_args(flags, (DistillFlags if stage == "distill" else FinetuneFlags)(position))
    args.world_size, args.rank, args.distributed = 1, 0, False
    return args


def autocast_for(opts):
    """open_clip_train's autocast for --precision (a no-op context for fp32)."""
    return get_autocast(opts.precision, device_type=torch.device(opts.device).type)


def adamw(model):
    """The reference's optimizer: torch's AdamW with default settings."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)


class Runner:
    """Runs `steps` optimizer steps from an endless batch iterator and reports samples/s; `details` (optional)
    returns extra figures for the report."""

    def __init__(self, name, batches, step, batch_size, details=None):
        self.name, self.batches, self.step, self.batch_size = name, batches, step, batch_size
        self.details = details

    def run(self, steps: int) -> float:
        synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            self.step(next(self.batches))
        synchronize()
        return steps * self.batch_size / (time.perf_counter() - start)


def synchronize():
    """Queued GPU work belongs to the steps that queued it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class TimedTeacher:
    """The live teacher with each forward timed where it runs (CUDA events on a GPU, no added synchronisation),
    so the report can split the teacher arm's step into the teacher's share and the rest."""

    def __init__(self, teacher: TeacherTextFeatures, device: torch.device):
        self.teacher, self.on_gpu, self.spans = teacher, device.type == "cuda", []

    def __call__(self, ids):
        if not self.on_gpu:
            start = time.perf_counter()
            out = self.teacher(ids)
            self.spans.append(time.perf_counter() - start)
            return out
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = self.teacher(ids)
        end.record()
        self.spans.append((start, end))
        return out

    def median_ms(self) -> float:
        synchronize()
        spans = [s * 1000 if isinstance(s, float) else s[0].elapsed_time(s[1]) for s in self.spans]
        return statistics.median(spans)


def forever(loader):
    while True:
        yield from loader


def stage1_runners(csv, opts, device):
    args = training_args("distill", csv, opts)
    inputs = TeacherInputs(open_clip.get_tokenizer(opts.student), open_clip.get_tokenizer(opts.teacher))
    teacher, preprocess_train, _ = open_clip.create_model_and_transforms(opts.teacher, device=device,
                                                                         output_dict=True)
    teacher.eval().requires_grad_(False)

    student = open_clip.create_model(opts.student, device=device)
    freeze_all_but_text(student)
    optimizer = create_optimizer(student, args)
    step_fn = make_distill_step(StudentTextFeatures(student), TeacherTextFeatures(teacher, inputs), {"cosine": 1.0},
                                device, autocast_for(opts), NO_SCALER, distributed=False)

    def ours(batch):
        optimizer.zero_grad(set_to_none=True)
        step_fn([batch])
        optimizer.step()

    naive_student = open_clip.create_model(opts.student, device=device, output_dict=True)
    freeze_all_but_text(naive_student)
    naive_optimizer = adamw(naive_student)
    naive_loader = DataLoader(CsvDataset(csv, preprocess_train, "filepath", "title", tokenizer=inputs.data_tokenizer),
                              batch_size=opts.batch_size, shuffle=True, drop_last=True,
                              num_workers=opts.workers)

    def naive(batch):
        images, ids = (t.to(device) for t in batch)
        ids, teacher_ids = inputs.split(ids)
        naive_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad(), autocast_for(opts)():
            target = teacher(images, teacher_ids)["text_features"]
        with autocast_for(opts)():
            features = naive_student(images, ids)["text_features"]
        distillation_losses(features, target, {"cosine": 1.0})["loss"].backward()
        naive_optimizer.step()

    return [Runner("ours", forever(get_text_data(args, inputs.data_tokenizer).dataloader), ours, opts.batch_size),
            Runner("naive", forever(naive_loader), naive, opts.batch_size)]


def stage2_runners(csv, opts, device):
    args = training_args("finetune", csv, opts)
    tokenizer = open_clip.get_tokenizer(opts.student)
    model, preprocess_train, _ = open_clip.create_model_and_transforms(opts.student, device=device)
    optimizer = create_optimizer(model, args)
    clip_loss = clip_loss_for(args)
    features = ClipFeatures(model)
    step_fn = make_finetune_step(features, features, clip_loss, 0.2, device, None, autocast_for(opts), NO_SCALER, False)

    def ours(batch):
        optimizer.zero_grad(set_to_none=True)
        step_fn([batch])
        optimizer.step()

    naive_model = open_clip.create_model(opts.student, device=device, output_dict=True)
    naive_optimizer = adamw(naive_model)

    def naive(batch):
        images, long_ids, short_ids = (t.to(device) for t in batch)
        naive_optimizer.zero_grad(set_to_none=True)
        with autocast_for(opts)():
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
    from training_ext.data.teacher_cache import TeacherCache

    folder = os.path.dirname(csv)
    teacher_path = os.path.join(folder, "teacher.pt")
    torch.save(open_clip.create_model(opts.teacher).state_dict(), teacher_path)
    cache_dir = os.path.join(folder, "teacher_cache")
    precompute_teacher_embeddings.main(["--teacher-model", opts.teacher, "--teacher-pretrained", teacher_path,
                                        "--data", csv, "--output", cache_dir, "--device", opts.device,
                                        "--precision", "fp32", "--no-progress"])
    teacher = open_clip.create_model(opts.teacher, pretrained=teacher_path, device=device).eval()
    tokenizer = open_clip.get_tokenizer(opts.student)
    inputs = TeacherInputs(tokenizer, open_clip.get_tokenizer(opts.teacher))
    runners = []
    args = training_args("distill", csv, opts)
    for name, cache in (("teacher", None), ("cached", TeacherCache(cache_dir))):
        student = open_clip.create_model(opts.student, device=device)
        freeze_all_but_text(student)
        optimizer = create_optimizer(student, args)  # both sides ours: only the teacher's work differs
        timed = None if cache else TimedTeacher(TeacherTextFeatures(teacher, inputs), device)
        step_fn = make_distill_step(StudentTextFeatures(student), timed, {"cosine": 1.0}, device,
                                    autocast_for(opts), NO_SCALER, distributed=False)

        def step(batch, step_fn=step_fn, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            step_fn([batch])
            optimizer.step()

        loader = get_text_data(args, tokenizer if cache else inputs.data_tokenizer, teacher_cache=cache).dataloader
        details = (lambda timed=timed: {"teacher_forward_ms": timed.median_ms()}) if timed else None
        runners.append(Runner(name, forever(loader), step, opts.batch_size, details))
    return runners


STAGES = {"1": (stage1_runners, "ours", "naive"), "2": (stage2_runners, "ours", "naive"),
          "1c": (stage1_cache_runners, "cached", "teacher")}


def measure(runners, rounds: int, steps: int, desc: str):
    for runner in runners:  # warm-up: allocator, first-call overheads
        runner.run(1)
    rates = {runner.name: [] for runner in runners}
    for round_index in tqdm(range(rounds), desc=desc):
        # Alternate which side goes first: the side that runs right after the other one pays for its cold
        # caches and allocator state (measured here: up to 20% on one side), which must not favour either.
        for runner in runners if round_index % 2 == 0 else runners[::-1]:
            rates[runner.name].append(runner.run(steps))
    details = {key: value for runner in runners if runner.details for key, value in runner.details().items()}
    return {name: statistics.median(values) for name, values in rates.items()}, details


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="ViT-B-16-rope-248", help="student / fine-tuned model config")
    parser.add_argument("--teacher", default="ViT-B-16", help="stage-1 teacher config (77 tokens)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (median reported)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per round")
    parser.add_argument("--workers", type=int, default=0,
                        help="data loader processes for both sides (0: data time counts in the step, as on a "
                             "machine with no spare cores; on a GPU machine use several, as real runs do)")
    parser.add_argument("--fixture-batches", type=int, default=8,
                        help="batches in the generated dataset (more amortises worker start-up per epoch)")
    parser.add_argument("--caption-words", type=int, default=120,
                        help="words per long caption (120 words ~ 150 tokens; 200+ fills the 248 context)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(640, 480), help="JPEG width height")
    parser.add_argument("--stages", default="1,2", help="which stages to measure: 1, 2, and 1c (stage 1 with a "
                                                        "teacher cache against running the teacher)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="open_clip_train precision for both sides "
                                                             "(fp32 on CPU; amp_bf16 on GPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    device = torch.device(opts.device)
    results = {"student": opts.student, "teacher": opts.teacher, "batch_size": opts.batch_size,
               "caption_words": opts.caption_words, "device": str(device), "precision": opts.precision,
               "workers": opts.workers, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as folder:
        csv = write_fixture(folder, opts.batch_size * opts.fixture_batches, opts.caption_words, opts.image_size)
        captions = read_csv_table(csv, {"--csv-caption-key": "title"}).columns["title"]
        tokenizer = open_clip.get_tokenizer(opts.student)  # tokens the student reads: cut to its context
        results["mean_caption_tokens"] = statistics.mean(min(len(ids), tokenizer.context_length)
                                                         for ids in caption_ids(tokenizer, captions))
        for stage in opts.stages.split(","):
            build, fast, slow = STAGES[stage]
            rates, details = measure(build(csv, opts, device), opts.rounds, opts.steps, f"stage {stage}")
            results[f"stage{stage}"] = {**rates, **details, "speedup": rates[fast] / rates[slow],
                                        # one epoch of the fixture (its size times the batches of one rate)
                                        "epoch_seconds": {k: opts.batch_size * opts.fixture_batches / v
                                                                  for k, v in rates.items()}}
    print(json.dumps(results, indent=1))
    for stage in opts.stages.split(","):
        _, fast, slow = STAGES[stage]
        r = results[f"stage{stage}"]
        print(f"stage {stage}: {fast} {r[fast]:.2f} samples/s, {slow} {r[slow]:.2f} samples/s, "
              f"speedup {r['speedup']:.2f}x")
        if "teacher_forward_ms" in r:
            step_ms = {arm: 1000 * opts.batch_size / r[arm] for arm in (fast, slow)}
            print(f"  step ms: {slow} {step_ms[slow]:.1f}, {fast} {step_ms[fast]:.1f}; the teacher's forward "
                  f"inside the {slow} step: {r['teacher_forward_ms']:.1f} ms (median)")
    if opts.json:
        with open(opts.json, "w") as stream:
            json.dump(results, stream, indent=1)


if __name__ == "__main__":
    main()
